"""``sdeflow sample --checkpoint digits-tokens``: sample a token model (discrete diffusion over the pixels' values,
``sdeflow train --tokens``), write the images and score digits with the shipped classifier.

Samples are drawn in fixed chunks of :data:`CHUNK` with one seeded generator each, so they do not depend on
``--batch-size``.
"""

from __future__ import annotations

import math

import torch

from ..files import save_npz
from .args import PICTURE_LIMIT, parse_labels

#: Samples per seeded chunk.
CHUNK = 100

#: The Frechet distance of fewer samples than this is not printed (its bias dominates).
FD_LEAST = 200

#: Without ``--sampler``: on the masked process the first-hitting sampler, by default with one evaluation per
#: token (``--nfe`` = the sequence's length), which draws from the model's own law with no discretisation
#: error; on the uniform process the exact one-step kernel on as many steps.
DEFAULT_MASKED_SAMPLER, DEFAULT_UNIFORM_SAMPLER = "first-hitting", "ancestral"


def check_token_flags(args) -> None:
    """Refuse the sampling flags that have no meaning for a token model, before any work."""
    bad = [flag for flag, given in (("--teleport", args.teleport is not None), ("--partial", args.partial),
                                    ("--noise", args.noise != "generator"),
                                    ("--guidance-method", args.guidance_method != "cfg"),
                                    ("--guidance-interval", args.guidance_interval is not None),
                                    ("--guidance-option", bool(args.guidance_option)), ("--guide", args.guide is not None),
                                    ("--classifier", args.classifier is not None)) if given]
    if bad:
        raise ValueError(f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply to a token model (it samples "
                         "with a token sampler and takes --sampler, --nfe or --steps, --grid T0,T1,..., --label, "
                         "--guidance W for classifier-free guidance)")


def sample_token_model(args, model, outs: list[str], dist) -> dict:
    from ..data.pictures import class_columns, save_samples
    from ..discrete import TOKEN_SAMPLERS, Masked, TokenModel, sample_tokens
    from ..noise import mix_seed
    from ..data.tokens import to_images

    check_token_flags(args)
    if dist.world > 1:
        raise ValueError("a token model samples on one process (start it without torchrun)")
    process = model.denoiser.process
    args.sampler = args.sampler or (DEFAULT_MASKED_SAMPLER if isinstance(process, Masked) else DEFAULT_UNIFORM_SAMPLER)
    if args.sampler not in TOKEN_SAMPLERS:
        raise ValueError(f"{args.sampler!r} is not a token sampler; a token model takes one of: {', '.join(TOKEN_SAMPLERS)}")
    ts = None
    if args.grid is not None:
        if "," not in args.grid:
            raise ValueError(f"--grid {args.grid}: a token model takes explicit decreasing times from 1 to 0 "
                             "(e.g. 1,0.6,0.3,0) or no --grid (uniform in t)")
        ts = torch.tensor([float(v) for v in args.grid.split(",")], dtype=torch.float64)
        if float(ts[0]) != 1.0 or float(ts[-1]) != 0.0 or not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError(f"--grid {args.grid}: the times must decrease strictly from 1 to 0")
    steps = args.steps or args.nfe or model.shape[0]
    if ts is not None:
        steps = ts.numel() - 1
    args.num = args.num or 100
    labels = parse_labels(args.label, args.num, model.num_classes)
    if args.guidance is not None and labels is None:
        raise ValueError("--guidance needs labels: a class-conditional model and --label other than none")
    length = model.shape[0]
    xs, nfes = [], []
    for k in range(math.ceil(args.num / CHUNK)):
        n = min(CHUNK, args.num - k * CHUNK)
        chunk_labels = None if labels is None else labels[k * CHUNK:k * CHUNK + n]
        net = TokenModel(model.denoiser.net, process, label=chunk_labels,
                         guidance=1.0 if args.guidance is None else args.guidance)
        out = sample_tokens(net, process, args.sampler, steps, n, length, ts=ts,
                            generator=torch.Generator().manual_seed(mix_seed(args.seed, k, 11)))
        xs.append(out.x)
        nfes.append(out.nfe)
    tokens = torch.cat(xs)
    images = to_images(tokens, model.meta["data"])
    name = args.checkpoint
    guide = "" if args.guidance is None else f", guidance {args.guidance:g}"
    nfe = f"NFE {max(nfes)}" if min(nfes) == max(nfes) else f"NFE {min(nfes)}-{max(nfes)} (unchanged steps cached)"
    count = "" if args.sampler == "first-hitting" else f", {steps} step{'s' if steps != 1 else ''}"
    print(f"{args.num} samples of {name} with {args.sampler}{guide}{count}, {nfe} per chunk of {CHUNK}")
    score = None
    if model.meta["data"].get("name") == "digits" and list(model.meta["data"]["image"]) == [1, 8, 8]:
        from ..pretrained.scoring import DigitsScorer

        scorer = DigitsScorer()
        acc, fd = scorer.score(images, labels)
        what = "" if labels is None else f"accuracy {acc:.3f} (classifier on real test digits: {scorer.test_accuracy:.3f}); "
        if args.num >= FD_LEAST:
            what += (f"FD {fd:.2f} to real digits from {args.num} samples (two real halves of about 900: "
                     f"{scorer.floor:.2f}; fewer samples raise it)")
        else:
            what += f"FD left out: it needs at least {FD_LEAST} samples (-n)"
        print(f"  shipped digits classifier: {what}")
        score = {"accuracy": acc, "fd": fd}
    for out in outs:
        if out.lower().endswith(".npz"):
            arrays = dict(tokens=tokens.numpy(), samples=images.numpy())
            if labels is not None:
                arrays["labels"] = labels.numpy()
            save_npz(out, **arrays)
        else:
            nrow = class_columns(model.num_classes) if (labels is not None and args.label in (None, "all")) else None
            save_samples(images[:PICTURE_LIMIT], out, "image", nrow=nrow)
        print(f"  wrote {out}")
    return {"x": images, "tokens": tokens, "labels": labels, "score": score}

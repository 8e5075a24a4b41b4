"""Train the digits classifier that the quality benchmark uses, and ship it.

    python benchmarks/digits_classifier.py            # writes sdeflow/pretrained/digits-classifier.safetensors

scikit-learn's 1797 digits are split (seeded, stratified) into 1297 training and 500 test images;
the classifier (:class:`sdeflow.models.Classifier`) is trained with AdamW on the training images with
random one-pixel shifts, and its test accuracy is stored in the file's metadata. Its penultimate
layer (64 features) is the feature space of the benchmark's Frechet distance.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sdeflow import data, models  # noqa: E402
from sdeflow.pretrained import FOLDER  # noqa: E402
from sdeflow import checkpoint as ckpt  # noqa: E402

SPLIT_SEED, N_TEST = 0, 500


def split(labels: torch.Tensor, seed: int = SPLIT_SEED, n_test: int = N_TEST):
    """Stratified split: ``n_test`` test indices spread evenly over the classes, the rest for training."""
    g = torch.Generator().manual_seed(seed)
    classes = int(labels.max()) + 1
    test = []
    for k in range(classes):
        idx = torch.nonzero(labels == k).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test.append(idx[: round(n_test * len(idx) / len(labels))])
    test = torch.sort(torch.cat(test)).values
    train = torch.tensor(sorted(set(range(len(labels))) - set(test.tolist())))
    return train, test


def shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts by -1, 0 or 1 pixel in each direction (background -1 fills in)."""
    dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    h, w = x.shape[-2:]
    return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def accuracy(net, x, y) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).double().mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--out", default=os.path.join(FOLDER, "digits-classifier.safetensors"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    d = data.digits()
    train, test = split(d.labels)
    net = models.Classifier()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.epochs * (len(train) // 64 + 1))
    g = torch.Generator().manual_seed(1)
    for epoch in range(args.epochs):
        net.train()
        order = train[torch.randperm(len(train), generator=g)]
        for k in range(0, len(order), 64):
            idx = order[k:k + 64]
            loss = torch.nn.functional.cross_entropy(net(shift(d.x[idx], g)), d.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            net.eval()
            print(f"epoch {epoch + 1}: train accuracy {accuracy(net, d.x[train], d.labels[train]):.4f}, "
                  f"test accuracy {accuracy(net, d.x[test], d.labels[test]):.4f}")
    net.eval()
    acc = accuracy(net, d.x[test], d.labels[test])
    meta = {"architecture": "classifier", "network": net.config, "test_accuracy": acc, "split_seed": SPLIT_SEED,
            "n_test": N_TEST, "data": d.describe()}
    ckpt.save(args.out, {f"ema.{k}": v for k, v in net.state_dict().items()}, meta)
    print(f"wrote {args.out} (test accuracy {acc:.4f})")


if __name__ == "__main__":
    main()

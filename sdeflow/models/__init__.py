"""Reference networks: an MLP for low-dimensional data, a compact UNet for small images, a small
image classifier (for quality measurements) and a noise-aware one (classifier guidance). All take ``net(x, c,
label=None)`` where ``c`` is the
``(B,)`` time input of :class:`~sdeflow.denoisers.ModelDenoiser`; each is rebuilt from its
``config`` dict, which checkpoints store as JSON."""

from ..names import NameTable
from .classifier import Classifier, NoisyClassifier
from .embedding import TimeEmbedding
from .mlp import MLP
from .tokens import TokenTransformer, TokenUNet
from .unet import UNet

#: Architectures by name, for checkpoints: ``ARCHITECTURES[name](**config)``.
ARCHITECTURES = NameTable("architecture", {
    "mlp": (MLP, "an MLP with a time embedding, for low-dimensional data"),
    "unet": (UNet, "a compact class-conditional UNet for small images"),
    "classifier": (Classifier, "a small image classifier (the quality benchmark's judge)"),
    "noisy-classifier": (NoisyClassifier, "a noise-aware classifier of p_t(c | x_t) (classifier guidance)"),
    "token-transformer": (TokenTransformer, "a small transformer over token sequences (discrete diffusion)"),
    "token-unet": (TokenUNet, "a UNet over the embeddings of a square grid of tokens (discrete diffusion)"),
})


def check_config(name: str, config) -> None:
    """Refuse, with what is allowed, a network setting its architecture does not take or a value it
    cannot have: the type of each setting is its default's (integers for sizes, at least 1, except
    ``num_classes`` >= 0; lists of such integers; numbers; true/false), ``dropout`` in [0, 1) and
    ``time_scale`` > 0."""
    import inspect
    import math

    if not isinstance(config, dict):
        raise ValueError(f"{name} settings must be a table of KEY = VALUE, got {type(config).__name__}")
    params = {k: p.default for k, p in inspect.signature(ARCHITECTURES[name]).parameters.items()}
    for key, value in config.items():
        if key not in params:
            raise ValueError(f"{name} has no setting {key!r}; allowed: {', '.join(params)}")
        default, least = params[key], 0 if key in ("num_classes", "attention") else 1
        is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        if isinstance(default, bool) or key == "jump":
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, (tuple, list)):
            ok = isinstance(value, (list, tuple)) and all(is_int(v) and v >= least for v in value)
            want = f"a list of integers >= {least}, e.g. [1, 2, 2]"
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
                0 <= value < 1 if key == "dropout" else value > 0)
            want = "a number in [0, 1)" if key == "dropout" else "a number > 0"
        else:  # sizes and counts
            ok, want = is_int(value) and value >= least, f"an integer >= {least}"
        if not ok:
            raise ValueError(f"{name} setting {key} must be {want}, got {value!r}")


def build(name: str, config: dict):
    """Rebuild a network from its architecture name and ``config`` (a checkpoint's JSON), after
    :func:`check_config`."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; allowed: {', '.join(ARCHITECTURES)}")
    check_config(name, config)
    try:
        return ARCHITECTURES[name](**config)
    except (TypeError, ValueError, RuntimeError) as err:  # unknown keys, or values no network can have
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"bad {name} configuration {config}: {reason}") from None


__all__ = ["ARCHITECTURES", "Classifier", "NoisyClassifier", "MLP", "TimeEmbedding", "TokenTransformer", "TokenUNet", "UNet",
           "build", "check_config"]

"""Reference networks: an MLP for low-dimensional data, a compact UNet for small images, a small
image classifier (for quality measurements) and a noise-aware one (classifier guidance). All take ``net(x, c, label=None)`` where ``c`` is the
``(B,)`` time input of :class:`~sdeflow.denoisers.ModelDenoiser`; each is rebuilt from its
``config`` dict, which checkpoints store as JSON."""

from .classifier import Classifier, NoisyClassifier
from .embedding import TimeEmbedding
from .mlp import MLP
from .unet import UNet

#: Architectures by name, for checkpoints: ``ARCHITECTURES[name](**config)``.
ARCHITECTURES = {"mlp": MLP, "unet": UNet, "classifier": Classifier, "noisy-classifier": NoisyClassifier}


def build(name: str, config: dict):
    """Rebuild a network from its architecture name and ``config`` (a checkpoint's JSON)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; allowed: {', '.join(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[name](**config)
    except (TypeError, ValueError, RuntimeError) as err:  # unknown keys, or values no network can have
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"bad {name} configuration {config}: {reason}") from None


__all__ = ["ARCHITECTURES", "Classifier", "NoisyClassifier", "MLP", "TimeEmbedding", "UNet", "build"]

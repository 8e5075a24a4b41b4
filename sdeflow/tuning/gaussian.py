"""A model's Gaussian for teleportation, kept beside its checkpoint (``<checkpoint>.teleport.safetensors``).

The Gaussian is the mean and covariance of the data the model was trained on
(:class:`~sdeflow.teleport.Teleport`); for a class-conditional model, one per class as well
(:class:`~sdeflow.teleport.ClassTeleport`), where the data carry labels. A checkpoint of a bundled dataset (``digits`` and the 2-D toys)
gets it fitted from that dataset on first use and stored; for any other checkpoint it is fitted from
the data given (``sdeflow sample --teleport-data FILE``, the same data in the same units as training).
As with tuned grids, a shipped model's Gaussian goes to ``<user folder>/tuned/`` since the package is
read-only to sdeflow."""

from __future__ import annotations

import os

import torch

from ..denoisers.base import Denoiser
from ..files import atomic_write, in_package, user_folder
from ..teleport import ClassTeleport, Teleport

#: Above this many values per sample the covariance is kept as its top principal directions.
FULL_UP_TO = 4096
RANK = 64


class GaussianDenoiser(Denoiser):
    """The exact ``x_hat`` of a data Gaussian (a :class:`~sdeflow.teleport.Teleport`, or one per class
    given ``label=``) under ``schedule``, at one time for the whole batch (as a sampler calls it): what a
    model of that Gaussian answers, at no network cost.
    ``sdeflow tune --method choose --on gaussian`` picks a configuration on it instead of on the model."""

    def __init__(self, gauss: Teleport, schedule):
        super().__init__(schedule)
        self.gauss = gauss
        self.sample_shape = gauss.shape

    def forward(self, x_t: torch.Tensor, t, label=None, **cond) -> torch.Tensor:
        return self.gauss.x_hat(x_t, self.schedule, t, label)


def gaussian_path(checkpoint_path: str) -> str:
    """Where a checkpoint's Gaussian is stored."""
    root, _ = os.path.splitext(checkpoint_path)
    if in_package(checkpoint_path):
        return os.path.join(user_folder(), "tuned", os.path.basename(root) + ".teleport.safetensors")
    return root + ".teleport.safetensors"


def fit_gaussian(x: torch.Tensor, labels: torch.Tensor | None = None) -> Teleport:
    """The Gaussian of data ``x`` ``(N, *shape)`` in model units: full covariance up to :data:`FULL_UP_TO`
    values per sample, else the top :data:`RANK` principal directions and the mean variance of the rest.
    With ``labels``, one per class as well (:class:`~sdeflow.teleport.ClassTeleport`)."""
    rank = None if x[0].numel() <= FULL_UP_TO else RANK
    return Teleport.fit(x, rank=rank) if labels is None else ClassTeleport.fit_classes(x, labels, rank=rank)


def model_gaussian(model, data_path: str | None = None) -> Teleport:
    """``model``'s Gaussian (a loaded checkpoint, :func:`sdeflow.pretrained.load_model`): fitted from the
    ``.npy``/``.npz`` array at ``data_path`` when given (raw data, mapped to the model's units by the scale
    and shift its checkpoint stores), else read from :func:`gaussian_path`, else fitted from the bundled
    dataset the checkpoint names; a fitted one is stored there. Refused, before any sampling, when none
    of these exists or the shapes disagree."""
    from safetensors.torch import load_file, save_file

    path = gaussian_path(model.path)
    gauss = None
    if data_path is None and os.path.exists(path):
        try:
            gauss = Teleport.from_state(load_file(path))
        except (OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"{path} is not a stored Gaussian ({err}); delete it to fit it again") from None
        if model.num_classes and not isinstance(gauss, ClassTeleport) and \
                model.meta.get("data", {}).get("name") in _bundled():  # stored before class Gaussians: refit
            gauss = None
    if gauss is None:
        from ..data.datasets import DATASETS, array_file, load

        info = model.meta.get("data", {})
        if data_path is not None:
            data = array_file(data_path)
            x = data.x.to(torch.float64) * float(info.get("scale", 1.0)) + float(info.get("shift", 0.0))
        elif info.get("name") in DATASETS:
            data = load(info["name"])
            x = data.x
        else:
            raise ValueError(f"teleportation needs the Gaussian of the training data: this checkpoint's data "
                             f"({info.get('name')!r}) is not bundled with sdeflow; pass --teleport-data with the "
                             "training data as an .npy/.npz array")
        if tuple(x.shape[1:]) != tuple(model.shape):
            raise ValueError(f"the data's samples are shaped {tuple(x.shape[1:])}, the model makes {tuple(model.shape)}")
        labels = data.labels if model.num_classes and data.labels is not None else None
        if labels is not None and int(labels.max()) + 1 != model.num_classes:
            raise ValueError(f"the data have {int(labels.max()) + 1} classes, the model {model.num_classes}")
        gauss = fit_gaussian(torch.as_tensor(x, dtype=torch.float64), labels)
        atomic_write(path, lambda tmp: save_file(gauss.state(), tmp))
    if gauss.shape != tuple(model.shape):
        raise ValueError(f"the Gaussian at {path} is for samples shaped {gauss.shape}, the model makes {tuple(model.shape)}")
    return gauss


def _bundled():
    from ..data.datasets import DATASETS

    return DATASETS

"""Tuned grids as values, kept in a JSON file beside a checkpoint (``<checkpoint>.grids.json``).

A file holds two kinds of entry: grids fitted for a sampler and budget (one per sampler and budget),
and configurations chosen for the model by a pilot run (``sdeflow tune --method choose``: one per
budget, :func:`find_chosen`), which ``sdeflow sample`` runs by default at that budget.

A shipped model's files are read-only to sdeflow: the grids a user tunes for it go to
``<user folder>/tuned/<name>.grids.json`` (:func:`~sdeflow.files.user_folder`), and ``--grid tuned``
looks there first, then in the grids shipped with the model (:func:`tuned_paths`): the user's entry
for a sampler and budget takes precedence over the shipped one."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import torch

from .. import grids
from ..files import in_package, user_folder, write_json
from ..samplers import Sampler
from ..samplers.fitted import FittedSampler


@dataclass
class TunedGrid:
    """A grid fitted for one model, sampler and NFE.

    ``loss``: its endpoint RMS error to the teacher on the held-out draws, without the worst
    ``trim`` share of them (see :func:`~sdeflow.tuning.optimize_grid`); ``hand``: the same error of
    every hand grid with the same number of steps; ``heldout``: its plain held-out RMS;
    ``cost_nfe``: model evaluations spent fitting (each on the batch of ``samples`` draws), teacher
    included.

    With fitted coefficients (:func:`~sdeflow.tuning.optimize_coefficients`): ``shift``, the relative
    change of each of the sampler's coefficients on this grid (see :class:`~sdeflow.samplers.FittedSampler`);
    ``loss`` is then the held-out error with them and ``base_loss`` with the sampler's own,
    ``heldout`` the held-out RMS with them, and ``cost_grad`` counts the evaluations
    the fit differentiated through. ``start``: how a run reaches ``ts[0]`` (see
    :data:`~sdeflow.tuning.draws.STARTS`): ``"top"``, the prior's draw there; ``"leading"``, the top's
    prior draw taken as a state at ``ts[0]``; ``"teleport"``, the data's Gaussian carrying the noise
    to ``ts[0]``. ``on``: what a pilot choice ran on, ``"model"``, or ``"gaussian"``, the Gaussian of
    the training data in the model's place (``sdeflow tune --method choose --on gaussian``)."""

    ts: list[float]
    sampler: str
    nfe: int
    method: str
    loss: float
    hand: dict[str, float] = field(default_factory=dict)
    cost_nfe: int = 0
    samples: int = 0
    shift: list[float] | None = None
    base_loss: float | None = None
    heldout: float | None = None
    cost_grad: int = 0
    start: str = "top"
    on: str = "model"

    @property
    def best_hand(self) -> tuple[str, float]:
        name = min(self.hand, key=self.hand.get)
        return name, self.hand[name]

    @property
    def chosen_grid(self) -> str | None:
        """The name of the hand grid of a pilot choice (``method = "choice:<grid>"``, see
        :func:`~sdeflow.tuning.choose_configuration`), else ``None``. With :attr:`sampler`, what
        ``SdeflowScheduler(sampler=..., grid=...)`` takes to run the same configuration."""
        return self.method.split(":", 1)[1] if self.method.startswith("choice:") else None

    def grid(self) -> torch.Tensor:
        return grids.check_grid(self.ts)

    def sampler_for(self, base: Sampler) -> Sampler:
        """The sampler to run on :meth:`grid`: ``base`` itself, or with this entry's fitted coefficients."""
        return base if self.shift is None else FittedSampler(base, tuple(self.ts), tuple(self.shift))


def tuned_path(checkpoint_path: str) -> str:
    """Where ``sdeflow tune`` writes the tuned grids of a checkpoint file: ``<name>.grids.json`` beside
    it, or, for a model shipped inside the package, ``<user folder>/tuned/<name>.grids.json``."""
    root, _ = os.path.splitext(checkpoint_path)
    if in_package(checkpoint_path):
        return os.path.join(user_folder(), "tuned", os.path.basename(root) + ".grids.json")
    return root + ".grids.json"


def tuned_paths(checkpoint_path: str) -> list[str]:
    """Where ``--grid tuned`` looks for a checkpoint's grids, first match wins: :func:`tuned_path`, then,
    for a shipped model, the grids shipped beside it."""
    own = tuned_path(checkpoint_path)
    shipped = os.path.splitext(checkpoint_path)[0] + ".grids.json"
    return [own] if shipped == own else [own, shipped]


def load_tuned(path: str) -> list[TunedGrid]:
    """The tuned grids stored in ``path`` (none if the file does not exist)."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            data = json.load(f)
        return [TunedGrid(**entry) for entry in data["grids"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a tuned-grid file: {e}") from None


def _key(g: TunedGrid) -> tuple:
    """What an entry replaces: a fitted grid, the one of its sampler and NFE; a pilot's choice, the choice
    at its NFE (whatever sampler it picked)."""
    return ("", g.nfe) if g.chosen_grid is not None else (g.sampler, g.nfe)


def save_tuned(path: str, new: list[TunedGrid]) -> list[TunedGrid]:
    """Add ``new`` to the entries in ``path`` (replacing any with the same key: a fitted grid, the one
    for the same sampler and NFE; a pilot's choice, the choice at the same NFE), atomically."""
    keep = {_key(g): g for g in load_tuned(path)}
    keep.update({_key(g): g for g in new})
    entries = sorted(keep.values(), key=lambda g: (g.chosen_grid is not None, g.sampler, g.nfe))
    write_json(path, {"grids": [asdict(g) for g in entries]})
    return entries


def find_tuned(path: str | list[str], sampler: str, nfe: int, steps: int | None = None) -> TunedGrid:
    """The grid tuned for ``sampler`` at a budget of ``nfe`` in ``path`` (its NFE, or, where the sampler
    cannot spend the budget exactly, its number of ``steps``), or an error naming what is stored. A list
    of paths is searched in order (:func:`tuned_paths`)."""
    paths = [path] if isinstance(path, str) else list(path)
    stored = []
    for p in paths:
        entries = sorted(load_tuned(p), key=lambda g: g.chosen_grid is not None)  # a fitted grid before a choice
        stored += entries
        for g in entries:
            if g.sampler == sampler and (g.nfe == nfe or (steps is not None and len(g.ts) - 1 == steps and g.nfe <= nfe)):
                return g
    have = ", ".join(f"{g.sampler} at NFE {g.nfe}" for g in stored) or "none"
    raise ValueError(f"no grid tuned for {sampler} at NFE {nfe} in {' or '.join(paths)} (stored: {have}); "
                     f"write one with: sdeflow tune --checkpoint ... --sampler {sampler} --nfe {nfe}")


def find_chosen(path: str | list[str], nfe: int) -> TunedGrid | None:
    """The configuration chosen for the model at a budget of ``nfe`` by ``sdeflow tune --method choose``
    (:func:`~sdeflow.tuning.choose_configuration`) stored in ``path``, or ``None``. A list of paths is
    searched in order (:func:`tuned_paths`: the user's choice before the one shipped with a model)."""
    for p in [path] if isinstance(path, str) else path:
        for g in load_tuned(p):
            if g.chosen_grid is not None and g.nfe == nfe:
                return g
    return None


def model_choice(model, nfe) -> TunedGrid | None:
    """The configuration chosen for ``model`` (a :class:`~sdeflow.pretrained.LoadedModel`) at a budget of
    ``nfe`` evaluations by ``sdeflow tune --method choose``: stored beside its checkpoint, in the user
    folder for a shipped model, or shipped with the model (the shipped models have them); else ``None``."""
    return find_chosen(tuned_paths(model.path), nfe) if isinstance(nfe, int) and not isinstance(nfe, bool) else None


def model_recommended(model, nfe: int):
    """``(sampler, ts)``: what ``sdeflow sample`` runs on ``model`` by default at a budget of ``nfe``
    evaluations: :func:`model_choice` where one is stored for ``nfe``, else
    :func:`sdeflow.recommended` (the table of the schedule's family)."""
    from ..samplers import SAMPLERS, recommended

    chosen = model_choice(model, nfe)
    if chosen is None:  # (recommended refuses a budget that is not a whole number >= 1)
        return recommended(model.denoiser.schedule, nfe)
    return SAMPLERS[chosen.sampler](), chosen.grid()


def model_recommended_name(model, nfe: int) -> str:
    """``"sampler (grid)"``: the names of :func:`model_recommended`'s configuration."""
    from ..samplers import default_sampling

    chosen = model_choice(model, nfe)
    return "{} ({})".format(*((chosen.sampler, chosen.chosen_grid) if chosen else
                              default_sampling(model.denoiser.schedule, nfe)))

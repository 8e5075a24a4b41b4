"""Training configuration: one flat record, from a TOML/YAML file and/or command-line flags.

Recipes fill the process-related fields with the combinations people train with; any field given
explicitly overrides the recipe:

========== ================ ============== =========== =============== ============
recipe     schedule         prediction     time input  time density    weighting
========== ================ ============== =========== =============== ============
``flow``   rectified-flow   velocity       t           logit-normal    output
``edm``    edm              edm            edm         log-normal      edm
``ddpm``   ddpm-linear      eps            index       uniform         output
``vp-v``   vp-cosine        v              t           uniform         min-snr
========== ================ ============== =========== =============== ============
"""

from __future__ import annotations

import math

import dataclasses
import os
from dataclasses import dataclass, field

RECIPES = {
    "flow": dict(schedule="rectified-flow", parameterization="velocity", time_input="t", time_density="logit-normal",
                 weighting="output"),
    "edm": dict(schedule="edm", parameterization="edm", time_input="edm", time_density="log-normal", weighting="edm"),
    "ddpm": dict(schedule="ddpm-linear", parameterization="eps", time_input="index", time_density="uniform",
                 weighting="output"),
    "vp-v": dict(schedule="vp-cosine", parameterization="v", time_input="t", time_density="uniform", weighting="min-snr"),
}

#: What a run trains: the denoiser of a diffusion / flow model, a noise-aware classifier of
#: ``p_t(c | x_t)`` on the same forward process (for classifier guidance; cross-entropy on noised data),
#: or a few-step model (:mod:`sdeflow.objectives.fewstep`, :mod:`sdeflow.training.reflow`): ``reflow``
#: (a denoiser trained on a teacher's noise-data pairs), ``progressive`` (a denoiser distilled to half
#: its teacher's steps), and the flow maps ``consistency``, ``shortcut`` and ``meanflow``.
OBJECTIVES = ("denoise", "classifier", "reflow", "progressive", "consistency", "shortcut", "meanflow")

#: Objectives whose network is a flow map (it takes the gap of a jump besides the time).
FLOW_MAP_OBJECTIVES = ("consistency", "shortcut", "meanflow")

#: Objectives that need a teacher checkpoint (the others may start from one).
TEACHER_OBJECTIVES = ("reflow", "progressive")

#: Scale of the sinusoidal time features for each time input (so the features span their range).
TIME_SCALES = {"t": 1000.0, "t1000": 1.0, "index": 1.0, "edm": 250.0, "logsnr": 50.0, "sigma": 10.0}


@dataclass
class TrainConfig:
    """Everything a run needs; stored in every checkpoint. ``None`` fields come from the recipe or
    are chosen from the data (network: UNet for images, MLP otherwise)."""

    data: str = "digits"
    out: str = "runs/digits"
    objective: str = "denoise"
    recipe: str = "flow"
    schedule: str | None = None
    parameterization: str | None = None
    time_input: str | None = None
    time_density: str | None = None
    weighting: str | None = None
    min_snr_gamma: float = 5.0
    sigma_data: float = 0.5
    ot_coupling: bool = False
    fokker_planck: float = 0.0
    image_size: int = 32
    standardize: bool = False
    toy_size: int = 100_000
    architecture: str | None = None
    model: dict = field(default_factory=dict)
    conditional: bool = True
    label_dropout: float = 0.1
    steps: int = 4000
    batch_size: int = 128
    lr: float = 4e-4
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    precision: str = "fp32"
    device: str = "auto"
    checkpoint_every: int = 1000
    sample_every: int = 1000
    skip_nonfinite: int = 0
    sample_sampler: str = "dpm-solver++-2m"
    sample_nfe: int = 20
    teacher: str | None = None
    teacher_sampler: str = "dpm-solver++-2m"
    teacher_nfe: int = 20
    pairs: int = 20_000
    distill_steps: int = 4
    jump_fraction: float = 0.25
    process: str | None = None
    degrade: str = "superres"
    degrade_noise: float = 0.05
    tokens: str | None = None
    token_schedule: str = "linear"
    token_loss: str = "nelbo"
    levels: int = 17

    def resolved(self) -> "TrainConfig":
        """A copy with the recipe's fields filled in, after checking every value."""
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; allowed: {', '.join(RECIPES)}")
        if self.process is not None and self.tokens is not None:
            raise ValueError("a run is a bridge (process) or over tokens (tokens), not both")
        if self.process is not None:
            cfg = self._bridge_filled()
        elif self.tokens is not None:
            cfg = self._tokens_filled()
        else:
            filled = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in RECIPES[self.recipe].items()}
            cfg = dataclasses.replace(self, **filled)
        if cfg.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {cfg.precision!r}")
        if cfg.time_input not in TIME_SCALES:
            raise ValueError(f"unknown time input {cfg.time_input!r}; allowed: {', '.join(TIME_SCALES)}")
        from ..parameterizations import PARAMETERIZATIONS
        from ..samplers import SAMPLERS
        from ..schedules import SCHEDULES
        from ..objectives.densities import DENSITIES
        from ..objectives.losses import WEIGHTINGS

        tables = [("schedule", SCHEDULES), ("parameterization", PARAMETERIZATIONS), ("time_density", DENSITIES),
                  ("weighting", WEIGHTINGS), ("sample_sampler", SAMPLERS)]
        for name, table in tables[-1:] if cfg.process is not None else [] if cfg.tokens is not None else tables:
            if getattr(cfg, name) not in table:
                raise ValueError(f"unknown {name} {getattr(cfg, name)!r}; allowed: {', '.join(table)}")
        if cfg.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {cfg.objective!r}; allowed: {', '.join(OBJECTIVES)}")
        allowed = (("token-transformer", "token-unet") if cfg.tokens is not None else
                   ("unet", "mlp") if cfg.objective == "denoise" else ("noisy-classifier",))
        if cfg.architecture not in (None, *allowed):
            raise ValueError(f"unknown architecture {cfg.architecture!r} for the {cfg.objective} objective; "
                             f"allowed: {', '.join(allowed)}")
        if cfg.objective in TEACHER_OBJECTIVES and not cfg.teacher:
            raise ValueError(f"the {cfg.objective} objective needs --teacher (a checkpoint or shipped model name)")
        if cfg.teacher_sampler not in SAMPLERS or SAMPLERS[cfg.teacher_sampler]().stochastic:
            raise ValueError(f"teacher_sampler must be a deterministic sampler (the teacher's ODE solve), got "
                             f"{cfg.teacher_sampler!r}")
        if not 0.0 < cfg.jump_fraction <= 1.0:
            raise ValueError(f"jump_fraction must be in (0, 1], got {cfg.jump_fraction}")
        for name in ("sample_every", "skip_nonfinite"):
            if getattr(cfg, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
        for name in ("steps", "batch_size", "checkpoint_every", "image_size", "sample_nfe", "toy_size",
                     "teacher_nfe", "pairs", "distill_steps"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        if not (math.isfinite(cfg.fokker_planck) and cfg.fokker_planck >= 0):
            raise ValueError(f"fokker_planck must be a weight >= 0, got {cfg.fokker_planck}")
        if cfg.fokker_planck > 0 and cfg.objective != "denoise":
            raise ValueError(f"fokker_planck is a penalty of the denoise objective, not of {cfg.objective}")
        if not 0.0 <= cfg.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {cfg.label_dropout}")
        if cfg.lr <= 0:
            raise ValueError(f"lr must be > 0, got {cfg.lr}")
        return cfg

    def _bridge_filled(self) -> "TrainConfig":
        """A bridge run (``process`` set): pairs of a clean sample and its source, made by measuring it with the
        operator ``degrade`` and noise ``degrade_noise`` and back-projecting; a bridge parameterization
        (default ``ddbm``), time input ``t``, weighting ``output`` or ``x0``. The schedule is the process'."""
        from ..bridges import BRIDGE_PARAMETERIZATIONS, BRIDGE_WEIGHTINGS, PROCESSES
        from ..inverse.operator_names import OPERATORS

        PROCESSES.lookup(self.process)
        cfg = dataclasses.replace(self, schedule=None, parameterization=self.parameterization or "ddbm",
                                  time_input=self.time_input or "t", time_density=self.time_density or "uniform",
                                  weighting=self.weighting or "output", conditional=False)
        checks = [("parameterization", BRIDGE_PARAMETERIZATIONS), ("weighting", BRIDGE_WEIGHTINGS),
                  ("time_input", ("t",)), ("time_density", ("uniform",)), ("objective", ("denoise",))]
        for name, allowed in checks:
            if getattr(cfg, name) not in allowed:
                raise ValueError(f"a bridge run (--process) takes {name} {' or '.join(allowed)}, got {getattr(cfg, name)!r}")
        OPERATORS.lookup(cfg.degrade)
        if not (math.isfinite(cfg.degrade_noise) and cfg.degrade_noise >= 0):
            raise ValueError(f"degrade_noise must be a finite number >= 0, got {cfg.degrade_noise}")
        if cfg.ot_coupling or cfg.fokker_planck > 0 or cfg.teacher:
            raise ValueError("a bridge run (--process) takes no ot_coupling, fokker_planck or teacher")
        return cfg

    def _tokens_filled(self) -> "TrainConfig":
        """A token run (``tokens`` set, :mod:`sdeflow.training.tokens`): images read as ``levels`` tokens per
        pixel, the token process ``tokens`` on the schedule ``token_schedule``, the loss ``token_loss``; the
        network predicts the clean-token posterior (parameterization ``posterior``, time input ``t``). Its
        preview sampler is a token sampler (default ``ancestral``)."""
        from ..discrete import TOKEN_PROCESSES, TOKEN_SAMPLERS, TokenSchedule
        from ..discrete.model import TOKEN_LOSSES

        TOKEN_PROCESSES.lookup(self.tokens)
        TokenSchedule(self.token_schedule)
        TOKEN_LOSSES.lookup(self.token_loss)
        if self.token_loss == "nelbo" and self.tokens != "masked":
            raise ValueError(f"token_loss nelbo is the masked process' NELBO; the {self.tokens} process trains with "
                             "score-entropy or gkl")
        if not isinstance(self.levels, int) or self.levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {self.levels!r}")
        default = type(self)().sample_sampler
        sampler = "ancestral" if self.sample_sampler == default else self.sample_sampler
        TOKEN_SAMPLERS.lookup(sampler)
        if sampler in ("remask", "first-hitting") and self.tokens != "masked":
            raise ValueError(f"sample_sampler {sampler} needs the masked process")
        for name, allowed in (("parameterization", "posterior"), ("time_input", "t"), ("objective", "denoise")):
            value = getattr(self, name)
            if value not in (None, allowed):
                raise ValueError(f"a token run (--tokens) takes {name} {allowed}, got {value!r}")
        if self.ot_coupling or self.fokker_planck > 0 or self.teacher:
            raise ValueError("a token run (--tokens) takes no ot_coupling, fokker_planck or teacher")
        return dataclasses.replace(self, schedule=None, parameterization="posterior", time_input="t",
                                   time_density="uniform", weighting=self.token_loss, sample_sampler=sampler)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def stored(cls, meta: dict) -> "TrainConfig":
        """The resolved configuration a checkpoint's metadata holds (``LoadedModel.meta``)."""
        return cls.from_dict(meta["config"]).resolved()

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        for f in dataclasses.fields(cls):
            if f.name in d:
                _check_type(f, d[f.name], where)
        return cls(**d)


def _check_type(f: dataclasses.Field, value, where: str) -> None:
    """A setting's value has its field's type: an integer for integer settings (10.5 is refused), a
    number for real ones, true/false for switches, text for names, a table for ``model``."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    kind = type(default) if default is not None else str
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str),
          dict: lambda v: isinstance(v, dict)}[kind](value)
    if not ok and not (value is None and default is None):
        words = {bool: "true or false", int: "an integer", float: "a number", str: "text", dict: "a table of KEY = VALUE"}
        raise ValueError(f"{where}: {f.name} must be {words[kind]}, got {value!r}")


def read_config_file(path: str) -> dict:
    """A flat table of settings from a ``.toml`` or ``.yaml``/``.yml`` file (names as in
    :class:`TrainConfig`, dashes or underscores)."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    if path.endswith(".toml"):
        import tomllib

        try:
            with open(path, "rb") as f:
                d = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: not valid TOML ({err})") from None
    elif path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ValueError("YAML config files need PyYAML (pip install pyyaml); TOML works without it") from None
        try:
            with open(path) as f:
                d = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    else:
        raise ValueError(f"config file {path!r}: use .toml, .yaml or .yml")
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a table of settings")
    return {k.replace("-", "_"): v for k, v in d.items()}

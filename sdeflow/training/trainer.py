"""The training loop behind ``sdeflow train``: single process or torchrun / DistributedDataParallel.

Reproducible and resumable by construction: everything random in step ``n`` (the batch indices,
times, noise, label dropout and the network's dropout) is drawn from generators seeded by
``(seed, n)``, the data order by ``(seed, epoch)``, and the learning rate is a function of ``n``. A
checkpoint therefore only has to hold the weights, the EMA, the optimiser state and ``n``: a run
killed at any moment and resumed with ``--resume`` from its last checkpoint produces the same
weights as an uninterrupted run. SIGINT/SIGTERM make the loop save a checkpoint after the current
step before it exits.

With ``torchrun --nproc_per_node=N`` each process draws the whole global batch's randomness from
the same generators and trains on its ``1/N`` slice; DistributedDataParallel averages the gradients,
so N processes follow the same trajectory as one (up to the order of floating-point sums).
"""

from __future__ import annotations

import os
import signal
import time
import weakref

import torch

from ..data import Dataset, load as load_data
from ..data.pictures import class_columns, save_samples
from ..denoisers import ModelDenoiser
from ..distributed import Distributed
from ..files import FolderLock, write_json
from ..noise import mix_seed
from ..shapes import expand_as_batch
from .. import checkpoint as ckpt
from .config import TrainConfig
from ..objectives.coupling import global_ot_pairing
from .ema import EMA
from .networks import build_network
from .students import load_teacher, make_loss, reflow_data

CHECKPOINT = "checkpoint.safetensors"

#: The settings a resumed run may change (they do not change the weights it reaches).
MAY_CHANGE = ("steps", "checkpoint_every", "sample_every", "device", "skip_nonfinite")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then constant."""
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs :meth:`fit`. ``resume=True`` continues
    from ``cfg.out/checkpoint.safetensors`` when it exists (its configuration must match)."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True, dataset: Dataset | None = None):
        self.cfg = cfg = cfg.resolved()
        self._started = time.perf_counter()  # wall-clock from here on counts as training time (reflow's pairs included)
        self.dist = Distributed(cfg.device)
        self.progress = progress and self.dist.main
        self.path = os.path.join(cfg.out, CHECKPOINT)
        # one run per folder: the main process locks it (released when the trainer is gone)
        self.lock = FolderLock(cfg.out) if self.dist.main else None
        if self.lock is not None:
            weakref.finalize(self, self.lock.release)
        try:
            self._build(cfg, resume, dataset)
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def _build(self, cfg: TrainConfig, resume: bool, dataset: Dataset | None) -> None:
        from ..schedules import SCHEDULES

        start = None
        if resume and os.path.exists(self.path):
            start = ckpt.load(self.path)
            saved = TrainConfig.from_dict(start[1]["config"], where=self.path).resolved()
            changed = {k for k, v in saved.to_dict().items() if v != cfg.to_dict()[k] and k not in MAY_CHANGE}
            if changed:
                raise ValueError(f"--resume: the settings {', '.join(sorted(changed))} differ from the run in {cfg.out}; "
                                 f"only {', '.join(MAY_CHANGE)} may change")
        elif not resume and os.path.exists(self.path):
            raise ValueError(f"{self.path} exists: pass --resume to continue that run, or choose another --out")
        elif resume:
            raise ValueError(f"--resume: {cfg.out} holds no checkpoint to continue ({CHECKPOINT}); leave out --resume "
                             "to start a new run there, or give the folder of the run to continue")
        self.data = dataset if dataset is not None else load_data(cfg.data, image_size=cfg.image_size,
                                                                  standardize=cfg.standardize, toy_size=cfg.toy_size, seed=cfg.seed)
        if len(self.data) == 0:
            raise ValueError(f"the data {cfg.data!r} hold no samples: nothing to train on")
        if cfg.batch_size % self.dist.world:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {self.dist.world} processes")
        self.process = self.operator = self.tokens = None
        if cfg.tokens is not None:  # images read as token sequences (sdeflow.training.tokens)
            from ..data.tokens import token_dataset
            from .tokens import token_process

            self.data, self.tokens, self.schedule = token_dataset(self.data, cfg.levels), token_process(cfg), None
        elif cfg.process is not None:  # pairs of clean samples and their sources (sdeflow.training.bridge_run)
            from .bridge_run import bridge_setup

            self.process, self.schedule, self.operator = bridge_setup(cfg, self.data.describe()["shape"])
        else:
            self.schedule = SCHEDULES.lookup(cfg.schedule)()
        self.teacher, self.teacher_meta = load_teacher(cfg, self.data, self.dist.device) if cfg.teacher else (None, None)
        self.pair_noise = None
        if cfg.objective == "reflow":
            self.data, self.pair_noise = reflow_data(cfg, self.data, self.teacher, self.dist, self.progress)
        self.data_info = self.data.describe()
        torch.manual_seed(mix_seed(cfg.seed, -1, 3))  # the initial weights, identical on every rank
        self.net = build_network(cfg, self.data_info, self.teacher_meta).to(self.dist.device)
        if self.teacher is not None:  # a student starts from its teacher's weights (a flow map's gap input: zero)
            self.architecture = self.teacher_meta["architecture"]
            if start is None:
                from ..pretrained import path_of
                weights = self.teacher.model.state_dict()
                own = self.net.state_dict()
                ckpt.load_weights(self.net, {**{k: v for k, v in own.items() if k not in weights}, **weights}, path_of(cfg.teacher))
        else:
            self.architecture = ("noisy-classifier" if cfg.objective == "classifier" else
                                 (cfg.architecture or "token-transformer") if cfg.tokens is not None else
                                 cfg.architecture or ("unet" if self.data_info["kind"] == "image" else "mlp"))
        self.ema = EMA(self.net, cfg.ema_decay)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(enabled=cfg.precision == "fp16" and self.dist.device.type == "cuda")
        if self.tokens is not None:
            from ..discrete import TokenLoss

            self.loss = TokenLoss(self.tokens, cfg.token_loss)
        elif self.process is not None:
            from ..bridges import BridgeLoss

            self.loss = BridgeLoss(cfg.weighting)
        else:
            self.loss = make_loss(cfg, self.teacher)
        self.step, self.seconds_before = 0, 0.0
        self.skipped, self.saved_step = 0, None
        if start is not None:
            tensors, meta = start
            self.seconds_before = float(meta.get("train_seconds", 0.0))
            ckpt.load_weights(self.net, ckpt.state("model", tensors), self.path)
            ckpt.load_weights(self.ema.model, ckpt.state("ema", tensors), self.path)
            ckpt.restore_optimizer(self.opt, tensors, meta["optimizer"])
            self.ema.updates, self.step = meta["ema_updates"], meta["step"]
            self.saved_step, self.skipped = self.step, int(meta.get("skipped_steps", 0))
            if "grad_scale" in meta and self.scaler.is_enabled():
                self.scaler.update(meta["grad_scale"])
        module = self.net
        if self.dist.world > 1:
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            module = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.denoiser = self._wrap(module)
        if cfg.objective == "classifier":
            from ..guidance.classifier import ModelClassifier

            self.classifier = ModelClassifier(module, self.schedule, time_input=cfg.time_input, sigma_data=cfg.sigma_data)
        self._perm: dict[int, torch.Tensor] = {}
        self._stop = False

    def _wrap(self, module) -> ModelDenoiser:
        """The network as the run's denoiser (a flow map when the network takes jumps, a bridge's denoiser of
        the residual with a process, as loading does)."""
        from ..denoisers import FlowMapDenoiser

        if self.tokens is not None:
            from ..discrete import TokenModel

            return TokenModel(module, self.tokens)
        if self.process is not None:
            from ..bridges import bridge_denoiser

            return bridge_denoiser(module, self.process, self.cfg.parameterization, self.cfg.sigma_data)
        kind = FlowMapDenoiser if self.net.config.get("jump") else ModelDenoiser
        return kind(module, self.schedule, self.cfg.parameterization, time_input=self.cfg.time_input)

    # ---- randomness as a function of the step ------------------------------------------------------
    def _batch_indices(self, step: int) -> torch.Tensor:
        n, b = len(self.data), self.cfg.batch_size
        pos = torch.arange(step * b, (step + 1) * b)
        first, last = step * b // n, ((step + 1) * b - 1) // n   # the epochs this batch spans
        # keep exactly the epochs' permutations this batch needs (one batch can span many epochs
        # when the dataset is smaller than a batch)
        self._perm = {e: self._perm[e] if e in self._perm else torch.randperm(
            n, generator=torch.Generator().manual_seed(mix_seed(self.cfg.seed, e, 7))) for e in range(first, last + 1)}
        perms = torch.stack([self._perm[e] for e in range(first, last + 1)])
        return perms[pos // n - first, pos % n]

    def _global_batch(self, step: int):
        """``(x, labels, t, eps, extra, source)`` of this rank's slice of the global batch of ``step`` (``source``:
        a bridge run's degraded views of ``x``, else None)."""
        cfg, dev = self.cfg, self.dist.device
        g = torch.Generator().manual_seed(mix_seed(cfg.seed, step, 1))
        idx = self._batch_indices(step)
        t, eps = self.loss.draw(self.data.x[idx], self.schedule, g)
        drop = torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout
        extra = self.loss.extra(cfg.batch_size, self.schedule, g) if getattr(self.loss, "columns", 0) else None
        if self.pair_noise is not None:
            eps = self.pair_noise[idx].to(eps.dtype)
        b = cfg.batch_size // self.dist.world
        mine = slice(self.dist.rank * b, (self.dist.rank + 1) * b)
        source = None
        if self.operator is not None:  # the global batch's degraded views, from this step's generator
            source = self.degrade(self.data.x[idx], g)[mine].to(dev)
        x = self.data.x[idx[mine]].to(dev)
        labels = None
        if self.cfg.objective == "classifier":
            labels = self.data.labels[idx][mine].to(dev)
        elif self.net_classes:
            labels = torch.where(drop, self.net_classes, self.data.labels[idx])[mine].to(dev)
        if cfg.ot_coupling:
            eps_mine = global_ot_pairing(x, eps.to(dev), self.dist.rank, self.dist.world)
        else:
            eps_mine = eps[mine].to(dev)
        return x, labels, t[mine], eps_mine, (None if extra is None else extra[mine]), source

    def degrade(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A bridge run's source of clean samples ``x``: measured with its operator and noise, back-projected."""
        from .bridge_run import degrade

        return degrade(self.operator, self.cfg.degrade_noise, x, generator)

    @property
    def net_classes(self) -> int:
        return getattr(self.net, "config", {}).get("num_classes", 0)

    # ---- the loop ----------------------------------------------------------------------------------
    def train_step(self, step: int) -> torch.Tensor | None:
        """One optimiser step; returns its loss, or None for a step skipped as non-finite."""
        cfg = self.cfg
        x, labels, t, eps, extra, source = self._global_batch(step)
        torch.manual_seed(mix_seed(cfg.seed, step, 2 + self.dist.rank))  # the network's dropout
        for group in self.opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        cond = {} if labels is None else {"label": labels}
        if source is not None:
            cond["source"] = source
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        with torch.autocast(self.dist.device.type, dtype=dtype, enabled=dtype is not None):
            if cfg.objective == "classifier":  # cross-entropy of the class of x_t = alpha x + sigma eps
                t_dev = t.to(x.device)
                a = expand_as_batch(self.schedule.alpha(t_dev).to(x.dtype), x)
                s = expand_as_batch(self.schedule.sigma(t_dev).to(x.dtype), x)
                loss = torch.nn.functional.cross_entropy(self.classifier.logits(a * x + s * eps, t_dev), labels)
            elif extra is not None:
                loss = self.loss(self.denoiser, x, cond=cond, t=t, eps=eps, extra=extra, step=step).mean()
            else:
                loss = self.loss(self.denoiser, x, cond=cond, t=t, eps=eps).mean()
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        scaled = self.scaler.is_enabled()  # fp16's loss scaler skips steps with overflowing gradients itself
        norm = None
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        elif not scaled:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.net.parameters() if p.grad is not None])
        ok = torch.isfinite(loss.detach().float())
        if norm is not None and not scaled:
            ok = ok & torch.isfinite(norm)
        if self.dist.world > 1:  # every process takes the same decision (the gradients are already shared)
            flag = ok.float().reshape(1)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            ok = flag[0] > 0
        if not bool(ok):
            self._nonfinite(step, loss, norm)
            return None
        self.scaler.step(self.opt)
        self.scaler.update()
        self.ema.update(self.net)
        return loss.detach()

    def _nonfinite(self, step: int, loss: torch.Tensor, norm: torch.Tensor | None) -> None:
        """A step whose loss or gradient is NaN or infinite is not applied: it is skipped while
        ``skip_nonfinite`` allows, otherwise training stops, keeping the last checkpoint written."""
        self.skipped += 1
        self.opt.zero_grad(set_to_none=True)
        if self.skipped <= self.cfg.skip_nonfinite:
            return
        loss = loss.detach()
        what = f"the loss is {float(loss):g}" if not bool(torch.isfinite(loss.float())) else \
            f"the gradient norm is {float(norm):g}"
        kept = (f"{self.path} keeps step {self.saved_step}" if self.saved_step is not None else
                "no checkpoint had been written yet")
        raise FloatingPointError(f"training stopped at step {step + 1}: {what} (the learning rate {self.cfg.lr:g} may be "
                                 f"too large, or the data hold extreme values); the step was not applied and {kept}. "
                                 "Mixed precision that overflows now and then: --skip-nonfinite N skips up to N such steps")

    def fit(self) -> dict:
        cfg = self.cfg
        handlers = self._catch_signals()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, unit="step", desc="training", dynamic_ncols=True)
        if self.dist.main:
            os.makedirs(cfg.out, exist_ok=True)
            write_json(os.path.join(cfg.out, "config.json"), {"config": cfg.to_dict(), "data": self.data_info})
        self.net.train()
        t0, done0, losses = time.perf_counter(), self.step, []
        try:
            while self.step < cfg.steps and not self._stop:
                loss = self.train_step(self.step)
                self.step += 1
                if loss is not None:
                    losses.append(loss)
                if self.dist.world > 1:  # stop together, or the others would wait in DDP's all-reduce
                    flag = torch.tensor([float(self._stop)], device=self.dist.device)
                    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                    self._stop = bool(flag.item())
                if bar is not None and losses and (self.step % 10 == 0 or self.step == cfg.steps):
                    rate = (self.step - done0) * cfg.batch_size / (time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{float(torch.stack(losses[-50:]).float().mean()):.4f}", samples_per_s=f"{rate:.0f}")
                    bar.update(self.step - bar.n)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or self._stop:
                    self.save()
                if cfg.sample_every and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                    self.preview()
        finally:
            self._restore_signals(handlers)
            if bar is not None:
                bar.close()
            if self.lock is not None:
                self.lock.release()
        elapsed = time.perf_counter() - t0
        self.check_ranks_agree()
        return {"steps": self.step, "seconds": elapsed, "samples_per_s": (self.step - done0) * cfg.batch_size / max(elapsed, 1e-9),
                "loss": float(torch.stack(losses[-100:]).float().mean()) if losses else float("nan"), "interrupted": self._stop}

    # ---- checkpoints, previews, signals ------------------------------------------------------------
    def metadata(self) -> dict:
        return {"config": self.cfg.to_dict(), "architecture": self.architecture, "network": self.net.config,
                "data": self.data_info, "step": self.step, "ema_updates": self.ema.updates, "skipped_steps": self.skipped,
                "train_seconds": self.seconds_before + time.perf_counter() - self._started}

    def save(self) -> None:
        if not self.dist.main:
            return
        opt_tensors, opt_meta = ckpt.optimizer_tensors(self.opt)
        tensors = {**{f"model.{k}": v for k, v in self.net.state_dict().items()},
                   **{f"ema.{k}": v for k, v in self.ema.model.state_dict().items()}, **opt_tensors}
        meta = {**self.metadata(), "optimizer": opt_meta}
        if self.scaler.is_enabled():
            meta["grad_scale"] = float(self.scaler.get_scale())
        ckpt.save(self.path, tensors, meta)
        self.saved_step = self.step

    def preview(self) -> None:
        """A picture of EMA samples in ``out/samples/step_<n>.png`` (images, tokens of images and 2-D data)."""
        if self.dist.main and self.tokens is not None:
            from .tokens import token_preview

            return token_preview(self)
        if not self.dist.main or not (self.data_info["kind"] == "image" or self.data_info["shape"] == [2]) \
                or self.cfg.objective == "classifier":
            return
        from ..generation import gather, generate
        from .students import sampling

        denoiser = self._wrap(self.ema.model)
        if self.process is not None:
            from .bridge_run import bridge_preview

            return bridge_preview(self, denoiser)
        sampler, ts = sampling(self.cfg, self.schedule)

        n = 100 if self.data_info["kind"] == "image" else 2000
        labels = torch.arange(n) % self.net_classes if self.net_classes else None
        x = gather(generate(denoiser, sampler, ts, tuple(self.data_info["shape"]), n, seed=self.cfg.seed, labels=labels,
                            device=self.dist.device), 1)
        save_samples(x, os.path.join(self.cfg.out, "samples", f"step_{self.step:07d}.png"), self.data_info["kind"],
                     nrow=class_columns(self.net_classes))

    def check_ranks_agree(self) -> None:
        """All processes must hold the same weights at the end (DDP keeps them in step)."""
        if self.dist.world == 1:
            return
        flat = torch.cat([p.detach().double().reshape(-1) for p in self.net.parameters()])
        sums = torch.stack([flat.sum(), (flat * torch.arange(flat.numel(), dtype=torch.float64, device=flat.device)).sum()])
        parts = [torch.empty_like(sums) for _ in range(self.dist.world)]
        torch.distributed.all_gather(parts, sums)
        if not all(torch.equal(parts[0], p) for p in parts):
            raise RuntimeError("the processes ended with different weights: " + ", ".join(str(p.tolist()) for p in parts))

    def _catch_signals(self):
        def stop(signum, frame):
            self._stop = True

        try:
            return {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread
            return {}

    @staticmethod
    def _restore_signals(handlers):
        for s, h in handlers.items():
            signal.signal(s, h)

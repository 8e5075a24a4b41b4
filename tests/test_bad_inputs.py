"""Bad input at the Python API, and faults (a full disk, a killed writer, a diverging run, a shipped
model's name shadowed by a folder): each is refused with a message that says what is wrong, before any
work, or is survived without losing anything. The command line's table is in ``tests/test_cli.py``
(``_bad_inputs``). A new bad input joins ``API_CASES``; a new fault joins ``FAULTS``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import sdeflow as sf
from sdeflow import analytic, schedules
from sdeflow.cli.main import main


class Counting:
    """A network ``x -> -x`` (an eps model) that counts its calls: work that started shows here."""

    def __init__(self, out=lambda x: -x):
        self.calls, self.out = 0, out

    def __call__(self, x, c, **cond):
        self.calls += 1
        return self.out(x)


def _digits():
    from sdeflow.pretrained import load_model

    return load_model("digits")


def _sample(net=None, x=None, **kw):
    net = net or Counting()
    den = sf.ModelDenoiser(net, schedules.VPLinear(), "eps")
    x = torch.randn(4, 3) if x is None else x
    try:
        return sf.sample(den, sf.samplers.DDIM(), sf.uniform_grid(4), x, **kw)
    finally:
        API_CALLS.append(net.calls)


def _sample_digits(label):
    m = _digits()
    return sf.sample(m.denoiser, sf.samplers.DDIM(), sf.uniform_grid(3), torch.randn(4, 1, 8, 8), cond={"label": label})


def _solve(operator=None, y=None, noise_std=0.05, num=2):
    from sdeflow.inverse import Bound, Downsample, solve

    m = _digits()
    op = operator if operator is not None else Downsample((1, 8, 8), 2)
    y = torch.zeros(op.out_shape) if y is None else y
    return solve("mmps", Bound(m.denoiser, label=torch.tensor([10])), op, y, noise_std, 10, num)


def _likelihood_empty():
    from sdeflow.likelihood import log_likelihood

    return log_likelihood(analytic.ring_2d().denoiser(schedules.VPLinear()), torch.zeros(0, 2))


def _object_npy(tmp_path):
    from sdeflow.data import load

    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return load(str(path))


def _garbage_npy(tmp_path):
    from sdeflow.data import load

    path = tmp_path / "garbage.npy"
    path.write_bytes(os.urandom(300))
    return load(str(path))


def _load_model(spec):
    from sdeflow.pretrained import load_model

    return load_model(spec)


def _downsample(factor):
    from sdeflow.inverse import Downsample

    return Downsample((1, 8, 8), factor)


API_CALLS: list[int] = []
FIRST_CALL = {"output-one-sample", "output-scalar", "output-not-a-tensor"}

#: (name, call(tmp_path), exception type, words the message must hold). Every call must fail before any
#: network evaluation (the counting networks record none), except a bad network output, which is
#: refused at the first evaluation that shows it (``FIRST_CALL``).
API_CASES = [
    ("output-one-sample", lambda p: _sample(Counting(lambda x: x[:1])), ValueError, "returned shape (1, 3)"),
    ("output-scalar", lambda p: _sample(Counting(lambda x: x.sum())), ValueError, "returned shape ()"),
    ("output-not-a-tensor", lambda p: _sample(Counting(lambda x: "x")), TypeError, "not a tensor"),
    ("empty-batch", lambda p: _sample(x=torch.zeros(0, 3)), ValueError, "no samples"),
    ("noise-not-a-source", lambda p: _sample(noise=3), TypeError, "torch.Generator"),
    ("noise-and-generator", lambda p: _sample(noise=torch.Generator(), generator=torch.Generator()), ValueError,
     "not both"),
    ("label-too-large", lambda p: _sample_digits(torch.full((4,), 11)), ValueError, "label 11 is not a class"),
    ("label-negative", lambda p: _sample_digits(torch.tensor([0, -1, 2, 3])), ValueError, "label -1"),
    ("label-float", lambda p: _sample_digits(torch.zeros(4)), ValueError, "integer classes"),
    ("likelihood-empty", lambda p: _likelihood_empty(), ValueError, "no samples"),
    ("operator-larger-than-model", lambda p: _solve(_downsample_of((1, 16, 16))), ValueError, "build the operator for (1, 8, 8)"),
    ("mask-of-another-shape", lambda p: _solve(_mask((4, 4))), ValueError, "shape (4, 4)"),
    ("y-of-another-shape", lambda p: _solve(y=torch.zeros(3, 4, 4)), ValueError, "y has shape (3, 4, 4)"),
    ("y-nan", lambda p: _solve(y=torch.full((1, 4, 4), float("nan"))), ValueError, "finite"),
    ("noise-std-nan", lambda p: _solve(noise_std=float("nan")), ValueError, "noise_std"),
    ("noise-std-negative", lambda p: _solve(noise_std=-0.1), ValueError, "noise_std"),
    ("num-zero", lambda p: _solve(num=0), ValueError, "num must be"),
    ("downsample-zero", lambda p: _downsample(0), ValueError, "integer >= 1"),
    ("operator-shape", lambda p: _downsample_of("8x8"), ValueError, "tuple of sizes"),
    ("load-model-none", lambda p: _load_model(None), ValueError, "shipped model name"),
    ("load-model-unknown-shipped", lambda p: _load_model("shipped:nope"), ValueError, "no shipped model 'nope'"),
    ("npy-objects", _object_npy, ValueError, "Python objects"),
    ("npy-garbage", _garbage_npy, ValueError, "not a readable"),
    ("model-setting-text", lambda p: sf.models.build("unet", {"mults": "[1,2"}), ValueError, "list of integers"),
    ("model-setting-negative", lambda p: sf.models.build("unet", {"base": -4}), ValueError, "integer >= 1"),
    ("model-setting-unknown", lambda p: sf.models.build("mlp", {"dim": 2, "widht": 3}), ValueError, "no setting 'widht'"),
    ("enkg-one-particle", lambda p: _enkg(1), ValueError, "num must be >= 2"),
]


def _downsample_of(shape):
    from sdeflow.inverse import Downsample

    return Downsample(shape, 2)


def _mask(shape):
    from sdeflow.inverse import Mask

    return Mask(torch.ones(shape, dtype=torch.bool))


def _enkg(num):
    from sdeflow.inverse import Mask, solve

    mix = analytic.random_mixture(4, 2, seed=0)
    net = Counting()
    den = sf.ModelDenoiser(net, schedules.VPLinear(), "eps")
    try:
        return solve("enkg", den, Mask(torch.tensor([True, False, True, True])), torch.zeros(3), 0.1, 5, num)
    finally:
        assert net.calls == 0 and mix is not None


@pytest.mark.parametrize("case", [c[0] for c in API_CASES])
def test_bad_api_input_is_refused_before_any_work_with_what_is_wrong(case, tmp_path):
    _, call, kind, words = next(c for c in API_CASES if c[0] == case)
    API_CALLS.clear()
    with pytest.raises(kind) as err:
        call(tmp_path)
    assert words in str(err.value), str(err.value)
    allowed = 1 if case in FIRST_CALL else 0
    assert all(n <= allowed for n in API_CALLS), f"{case}: the network ran {API_CALLS} times before the refusal"


def test_a_network_output_object_and_a_generator_are_taken_as_diffusers_users_pass_them():
    """diffusers' networks return an output object with ``.sample`` (or a tuple); diffusers and
    k-diffusion users pass ``generator=``."""
    class Output:
        def __init__(self, sample):
            self.sample = sample

    x = torch.randn(4, 3)
    plain = _sample(Counting(lambda x: -x), x=x).x
    assert torch.equal(_sample(Counting(lambda x: Output(-x)), x=x).x, plain)
    assert torch.equal(_sample(Counting(lambda x: (-x,)), x=x).x, plain)
    a = _sample(x=x, generator=torch.Generator().manual_seed(3)).x
    den = sf.ModelDenoiser(Counting(), schedules.VPLinear(), "eps")
    b = sf.sample(den, sf.samplers.DDPM(), sf.uniform_grid(4), x, noise=torch.Generator().manual_seed(3)).x
    c = sf.sample(den, sf.samplers.DDPM(), sf.uniform_grid(4), x, generator=torch.Generator().manual_seed(3)).x
    assert torch.equal(b, c) and torch.equal(a, plain)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_loaded_model_samples_a_state_of_any_dtype_in_its_own_dtype(dtype):
    """The state keeps the caller's dtype, the network runs in its own (float32 weights): a float64,
    fp16 or bf16 state samples to within that dtype's rounding of the float32 run."""
    m = _digits()
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = {"label": torch.arange(6)}
    ref = sf.sample(m.denoiser, sf.samplers.DDIM(), sf.uniform_grid(4), x, cond=cond).x
    out = sf.sample(m.denoiser, sf.samplers.DDIM(), sf.uniform_grid(4), x.to(dtype), cond=cond).x
    assert out.dtype == dtype
    tol = {torch.float64: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1.5e-1}[dtype]  # ~10 roundings of the state
    assert float((out.float() - ref).abs().max()) <= tol


# ------------------------------------------------------------------------------------------- faults
def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _disk_full(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space "
                          "left on device\" })")


def fault_full_disk_during_a_checkpoint(tmp_path, monkeypatch, capsys):
    """The second checkpoint of a run cannot be written: one line naming the file, the first kept."""
    import safetensors.torch

    from sdeflow import checkpoint as ckpt

    out = tmp_path / "run"
    base = ["train", "--data", "moons", "--toy-size", "200", "--model", "width=8", "--no-progress", "--sample-every", "0",
            "--out", str(out), "--batch-size", "16"]
    assert main([*base, "--steps", "2"]) == 0
    before = _digest(out / "checkpoint.safetensors")
    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    capsys.readouterr()
    assert main([*base, "--steps", "4", "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint.safetensors" in err and "No space left" in err, err
    assert "previous file is unchanged" in err, err
    assert _digest(out / "checkpoint.safetensors") == before and ckpt.load(str(out / "checkpoint.safetensors"))[1]["step"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def fault_full_disk_during_an_export(tmp_path, monkeypatch, capsys):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    assert main(["export", "moons", str(tmp_path / "m.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert "m.safetensors" in err and "No space left" in err and "nothing was written" in err, err
    assert list(tmp_path.iterdir()) == []


def fault_full_disk_during_samples(tmp_path, monkeypatch, capsys):
    """numpy's own ENOSPC while the samples are written: one line, nothing left behind."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    assert main(["sample", "--problem", "ring-2d", "-n", "8", "--out", str(tmp_path / "s.npz")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "s.npz" in err and "No space left" in err, err
    assert list(tmp_path.iterdir()) == []


def fault_a_killed_writer_leaves_a_temporary_that_the_next_write_removes(tmp_path, monkeypatch, capsys):
    """kill -9 during a write leaves ``.tmp-<host>-<pid>-...``; the next write into the folder removes it,
    and leaves a live writer's temporary alone."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname().replace("-", "_")
    stale = tmp_path / f".tmp-{host}-{int(dead.stdout)}-abc.npz"
    live = tmp_path / f".tmp-{host}-{os.getpid()}-def.npz"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    assert main(["sample", "--problem", "ring-2d", "-n", "8", "--out", str(tmp_path / "s.npz")]) == 0
    assert not stale.exists() and live.exists() and (tmp_path / "s.npz").exists()


def fault_a_diverging_run_stops_at_the_first_nonfinite_step_keeping_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    from sdeflow import checkpoint as ckpt

    out = tmp_path / "run"
    code = main(["train", "--data", "moons", "--toy-size", "200", "--model", "width=8", "--no-progress", "--lr", "1e30",
                 "--warmup", "1", "--steps", "20", "--checkpoint-every", "1", "--sample-every", "0", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "training stopped at step" in err and "keeps step" in err, err
    tensors, meta = ckpt.load(str(out / "checkpoint.safetensors"))
    assert meta["step"] < 20 and all(bool(torch.isfinite(v).all()) for v in tensors.values() if v.is_floating_point())
    assert f"keeps step {meta['step']}" in err


def fault_a_nonfinite_step_is_skipped_when_asked(tmp_path, monkeypatch, capsys):
    """--skip-nonfinite N: a step whose loss is NaN is not applied (the weights and EMA stay), training
    goes on, and the count is recorded; the (N+1)-th stops."""
    from sdeflow.training.config import TrainConfig
    from sdeflow.training.trainer import Trainer

    cfg = TrainConfig(data="moons", toy_size=200, model={"width": 8}, steps=6, batch_size=16, sample_every=0,
                      out=str(tmp_path / "run"), skip_nonfinite=1)
    trainer = Trainer(cfg, progress=False)
    real = trainer.loss.__class__.__call__
    calls = []

    def sometimes_nan(self, *args, **kwargs):
        calls.append(1)
        value = real(self, *args, **kwargs)
        return value * float("nan") if len(calls) in (3, 5) else value

    monkeypatch.setattr(trainer.loss.__class__, "__call__", sometimes_nan)
    trainer.train_step(0)
    trainer.train_step(1)
    weights = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    assert trainer.train_step(2) is None and trainer.skipped == 1
    assert all(torch.equal(weights[k], v) for k, v in trainer.net.state_dict().items())
    assert trainer.train_step(3) is not None
    with pytest.raises(FloatingPointError, match="the loss is nan"):
        trainer.train_step(4)
    trainer.lock.release()


def fault_tuning_a_shipped_model_leaves_the_package_untouched(tmp_path, monkeypatch, capsys):
    """``sdeflow tune`` on a shipped model writes to the user folder; ``--grid tuned`` prefers the
    user's entry and falls back to the shipped one; nothing can be written into the package."""
    from sdeflow.pretrained import FOLDER
    from sdeflow.tuning import find_tuned, tuned_path, tuned_paths

    monkeypatch.setenv("SDEFLOW_HOME", str(tmp_path / "home"))
    shipped, moons = os.path.join(FOLDER, "digits.grids.json"), os.path.join(FOLDER, "moons.grids.json")
    before, moons_before = _digest(shipped), _digest(moons)  # the shipped grids and choices
    assert main(["tune", "--checkpoint", "moons", "--sampler", "euler", "--nfe", "3", "--samples", "8",
                 "--teacher-steps", "10", "--method", "dp"]) == 0
    mine = tuned_path(os.path.join(FOLDER, "moons.safetensors"))
    assert mine == str(tmp_path / "home" / "tuned" / "moons.grids.json") and os.path.exists(mine)
    assert _digest(shipped) == before and _digest(moons) == moons_before
    paths = tuned_paths(os.path.join(FOLDER, "digits.safetensors"))
    assert paths == [str(tmp_path / "home" / "tuned" / "digits.grids.json"), shipped]
    assert find_tuned(paths, "unipc-bh2", 5).shift is not None  # the shipped entry, no user file yet
    capsys.readouterr()
    assert main(["tune", "--checkpoint", "digits", "--nfe", "5", "--out", shipped]) == 1
    assert "read-only" in capsys.readouterr().err and _digest(shipped) == before


def fault_a_local_folder_named_like_a_shipped_model(tmp_path, monkeypatch, capsys):
    """``train --out moons`` then ``--checkpoint moons``: the local run, with a warning naming
    ``shipped:moons``; ``shipped:moons`` is the shipped model."""
    from sdeflow.pretrained import FOLDER, load_model

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "swiss-roll", "--toy-size", "200", "--model", "width=8", "--steps", "2",
                 "--no-progress", "--sample-every", "0", "--out", "moons"]) == 0
    with pytest.warns(UserWarning, match="shipped:moons"):
        local = load_model("moons")
    assert os.path.samefile(local.path, tmp_path / "moons" / "checkpoint.safetensors") and local.shipped is None
    assert load_model("shipped:moons").path == os.path.join(FOLDER, "moons.safetensors")
    capsys.readouterr()
    assert main(["sample", "--checkpoint", "moons", "-n", "4", "--out", "s.npz"]) == 0
    assert "sdeflow: warning:" in capsys.readouterr().err


FAULTS = {name[len("fault_"):]: fn for name, fn in dict(globals()).items() if name.startswith("fault_")}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_fault_loses_nothing_and_says_what_happened(fault, tmp_path, monkeypatch, capsys):
    FAULTS[fault](tmp_path, monkeypatch, capsys)

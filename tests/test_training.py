"""Training runs end to end: loss decreases, checkpoints round-trip, a killed run resumes to the same
weights, two processes train and sample like one, bad inputs are clear errors that overwrite nothing."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sdeflow.cli.main import main
from sdeflow.pretrained import load_model
from sdeflow import checkpoint as ckpt
from sdeflow.training.config import TrainConfig
from sdeflow.training.trainer import Trainer

SMALL = ["--data", "moons", "--toy-size", "2000", "--model", "width=32", "--model", "depth=2", "--batch-size", "64",
         "--warmup", "5", "--lr", "3e-3", "--sample-every", "100000", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sdeflow", *args], capture_output=True, text=True, env=ENV, **kw)


def weights(path):
    tensors, meta = ckpt.load(path)
    return tensors, meta


def small_config(out, **kw):
    base = dict(data="moons", toy_size=2000, model={"width": 32, "depth": 2}, batch_size=64, warmup=5, lr=3e-3,
                sample_every=100000, out=str(out))
    return TrainConfig(**{**base, **kw})


def _held_out_improvement(trainer, steps):
    """Train ``steps`` steps; the held-out loss (same points, times and noise) before and after."""
    x = trainer.data.x[:2000]
    t, eps = trainer.loss.draw(x, trainer.schedule, torch.Generator().manual_seed(5))

    def held_out():
        with torch.no_grad():
            return trainer.loss(trainer.denoiser, x, t=t, eps=eps)

    before = held_out()
    for step in range(steps):
        trainer.train_step(step)
        for p in trainer.net.parameters():
            assert torch.isfinite(p.grad).all()
    after = held_out()
    drop = before - after
    assert float(after.mean()) < 0.8 * float(before.mean())
    assert float(drop.mean()) > 5 * float(drop.std()) / len(drop) ** 0.5


def test_toy_training_reduces_the_loss_with_finite_gradients(tmp_path):
    _held_out_improvement(Trainer(small_config(tmp_path / "run", steps=1), progress=False), 200)


def test_bf16_autocast_training_reduces_the_loss(tmp_path):
    _held_out_improvement(Trainer(small_config(tmp_path / "run", steps=1, precision="bf16"), progress=False), 200)


def test_checkpoint_round_trip(tmp_path):
    trainer = Trainer(small_config(tmp_path / "run", steps=7, checkpoint_every=3), progress=False)
    trainer.fit()
    tensors, meta = ckpt.load(trainer.path)
    assert meta["step"] == 7 and meta["ema_updates"] == 7
    for k, v in trainer.net.state_dict().items():
        assert torch.equal(tensors[f"model.{k}"], v)
    for k, v in trainer.ema.model.state_dict().items():
        assert torch.equal(tensors[f"ema.{k}"], v)
    again = Trainer(small_config(tmp_path / "run", steps=7), resume=True, progress=False)
    s1, s2 = trainer.opt.state_dict()["state"], again.opt.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for i in s1:
        assert all(torch.equal(torch.as_tensor(s1[i][k]), torch.as_tensor(s2[i][k])) for k in s1[i])
    model = load_model(str(tmp_path / "run"))
    x, t = torch.randn(5, 2), torch.rand(5)
    expected = trainer.ema.model(x, t)
    assert torch.equal(model.denoiser.model(x, t), expected)
    assert model.shape == (2,) and model.num_classes == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "w.safetensors"), "--half"]) == 0
    small = load_model(str(tmp_path / "w.safetensors"))
    assert torch.allclose(small.denoiser.model(x, t), expected, atol=1e-2)
    assert os.path.getsize(tmp_path / "w.safetensors") < os.path.getsize(trainer.path) / 4


KILLED_AT = 25
# The child signals itself when it starts step KILLED_AT: where the kill lands does not depend on
# how fast this machine is (a SIGKILL leaves the step-20 checkpoint; a SIGTERM saves after step 25).
SELF_SIGNAL = """
import os, sys
from sdeflow.cli.main import main
from sdeflow.training.trainer import Trainer
step_once = Trainer.train_step
def train_step(self, step):
    if step == {at}:
        os.kill(os.getpid(), {sig})
    return step_once(self, step)
Trainer.train_step = train_step
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("how", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, how):
    steps = ["--steps", "60", "--checkpoint-every", "10"]
    ref = cli("train", *SMALL, *steps, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", SELF_SIGNAL.format(at=KILLED_AT, sig=int(how)), "train", *SMALL, *steps,
                           "--out", str(out)], capture_output=True, text=True, env=ENV, timeout=300)
    path = str(out / "checkpoint.safetensors")
    stopped, spent = (ckpt.load(path)[1][k] for k in ("step", "train_seconds"))
    assert spent > 0
    if how == signal.SIGTERM:  # a polite stop saves the step it was in and says so
        assert proc.returncode == 0 and "stopped by a signal" in proc.stdout, proc.stderr
        assert stopped == KILLED_AT + 1
    else:
        assert proc.returncode == -signal.SIGKILL and stopped == 20
    assert main(["train", *SMALL, *steps, "--out", str(out)]) == 1  # without --resume: refuses to overwrite
    assert ckpt.load(path)[1]["step"] == stopped
    res = cli("train", *SMALL, *steps, "--out", str(out), "--resume")
    assert res.returncode == 0, res.stderr
    assert ckpt.load(path)[1]["train_seconds"] > spent  # the training time adds up over the resumed parts
    a, b = weights(str(tmp_path / "ref" / "checkpoint.safetensors"))[0], weights(path)[0]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=1e-6, atol=1e-7), k


@pytest.mark.parametrize("rows,batch", [(1, 4), (7, 4), (7, 1), (60, 128)])
def test_datasets_smaller_than_a_batch_train(tmp_path, rows, batch):
    """A batch may span many epochs (1 or 7 rows at batch 4, 60 rows at batch 128). Indices come from
    each epoch's permutation in order, so ``rows`` consecutive batches cover exactly ``batch`` whole
    epochs: every row appears exactly ``batch`` times; and training steps run."""
    data = np.random.default_rng(0).normal(size=(rows, 2)).astype(np.float32)
    np.save(tmp_path / "d.npy", data)
    trainer = Trainer(small_config(tmp_path / "run", data=str(tmp_path / "d.npy"), batch_size=batch))
    idx = torch.cat([trainer._batch_indices(step) for step in range(rows)])
    assert torch.equal(torch.bincount(idx, minlength=rows), torch.full((rows,), batch))
    for step in range(2):
        trainer.train_step(step)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(n, *args, module=("-m", "sdeflow")):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
                           f"--master_port={_free_port()}", *module, *args], capture_output=True, text=True,
                          env=ENV, timeout=300)


@pytest.mark.slow
def test_process_group_is_taken_down_before_the_interpreter(tmp_path):
    """A gloo group left to the interpreter's teardown can abort a finished run (SIGABRT); the group
    ``Distributed`` starts is destroyed at exit. The script's own exit handler, registered first, runs
    last and sees whether a group is still up, after a collective like training's."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import atexit, sys, torch\n"
        "from sdeflow.distributed import Distributed\n"
        "atexit.register(lambda: sys.stdout.write(f'group up at exit: {torch.distributed.is_initialized()}\\n'))\n"
        "d = Distributed('cpu')\n"
        "x = torch.full((3,), float(d.rank))\n"
        "torch.distributed.all_reduce(x)\n"
        "sys.stdout.write(f'sum {x.tolist()}\\n')\n")
    res = torchrun(2, module=(str(script),))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("sum [1.0, 1.0, 1.0]") == 2, res.stdout
    assert res.stdout.count("group up at exit: False") == 2, res.stdout


@pytest.mark.slow
def test_two_process_training_agrees_with_one_process(tmp_path):
    args = [*SMALL, "--steps", "25", "--ot-coupling"]
    one = cli("train", *args, "--out", str(tmp_path / "one"))
    two = torchrun(2, "train", *args, "--out", str(tmp_path / "two"))
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr[-3000:]
    assert "on 2 processes" in two.stdout
    a = weights(str(tmp_path / "one" / "checkpoint.safetensors"))[0]
    b = weights(str(tmp_path / "two" / "checkpoint.safetensors"))[0]
    for k in a:
        if k.startswith(("model.", "ema.")):
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k


@pytest.mark.slow
def test_two_process_sampling_is_bit_identical(tmp_path):
    run = tmp_path / "run"
    Trainer(small_config(run, steps=3), progress=False).fit()
    common = ["sample", "--checkpoint", str(run), "-n", "11", "--batch-size", "4", "--sampler", "sde-dpm-solver++-2m",
              "--nfe", "6"]
    one = cli(*common, "--out", str(tmp_path / "one.npz"))
    two = torchrun(2, *common, "--out", str(tmp_path / "two.npz"))
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    a, b = np.load(tmp_path / "one.npz")["samples"], np.load(tmp_path / "two.npz")["samples"]
    assert a.shape == (11, 2) and np.array_equal(a, b)
    # and the batch size does not matter either
    assert main([*common[:-4], "--batch-size", "11", "--sampler", "sde-dpm-solver++-2m", "--nfe", "6", "--out",
                 str(tmp_path / "three.npz")]) == 0
    assert np.array_equal(a, np.load(tmp_path / "three.npz")["samples"])


def test_bad_inputs_are_clear_errors_and_overwrite_nothing(tmp_path, cli_here):
    from PIL import Image

    r = cli_here("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--no-progress")
    assert r.returncode == 1 and "does not exist" in r.stderr and r.stderr.count("\n") == 1
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (10, 12), (10, 20, 30)).save(folder / "a.png")
    Image.new("RGBA", (10, 12)).save(folder / "b.png")
    r = cli_here("train", "--data", str(folder), "--out", str(tmp_path / "x"), "--no-progress")
    assert r.returncode == 1 and "mode RGBA" in r.stderr and "b.png" in r.stderr
    assert not (tmp_path / "x" / "checkpoint.safetensors").exists()
    # an existing run: another architecture, a corrupted file
    run = tmp_path / "run"
    Trainer(small_config(run, steps=2), progress=False).fit()
    path = run / "checkpoint.safetensors"
    before = path.read_bytes()
    r = cli_here("train", *SMALL, "--model", "width=48", "--steps", "4", "--out", str(run), "--resume")
    assert r.returncode == 1 and "model" in r.stderr and "differ" in r.stderr
    tensors, meta = ckpt.load(str(path))
    meta["network"]["width"] = 48  # a checkpoint whose weights do not fit its stated network
    bad = tmp_path / "other.safetensors"
    ckpt.save(str(bad), tensors, meta)
    r = cli_here("sample", "--checkpoint", str(bad), "--out", str(tmp_path / "s.png"))
    assert r.returncode == 1 and "does not fit" in r.stderr and not (tmp_path / "s.png").exists()
    path.write_bytes(before[: len(before) // 2])
    truncated = path.read_bytes()
    r = cli_here("train", *SMALL, "--steps", "4", "--out", str(run), "--resume")
    assert r.returncode == 1 and "corrupted" in r.stderr
    assert path.read_bytes() == truncated
    r = cli_here("sample", "--checkpoint", str(path))
    assert r.returncode == 1 and "corrupted" in r.stderr
    r = cli_here("sample", "--checkpoint", str(tmp_path / "nope.safetensors"))
    assert r.returncode == 1 and "no checkpoint" in r.stderr
    r = cli_here("sample", "--label", "12")
    assert r.returncode == 1 and "0..9" in r.stderr


def test_config_file_and_flags(tmp_path):
    from sdeflow.cli.main import build_parser
    from sdeflow.cli.train_cmd import config_from_args

    toml = tmp_path / "c.toml"
    toml.write_text('data = "moons"\nsteps = 7\nbatch-size = 32\nrecipe = "edm"\n[model]\nwidth = 16\n')
    cfg = config_from_args(build_parser().parse_args(["train", "--config", str(toml), "--steps", "9"]))
    assert (cfg.data, cfg.steps, cfg.batch_size, cfg.model, cfg.schedule, cfg.weighting) == ("moons", 9, 32, {"width": 16}, "edm", "edm")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data: moons\nlr: 0.01\n")
    assert config_from_args(build_parser().parse_args(["train", "--config", str(yaml_file)])).lr == 0.01
    toml.write_text("stepz = 3\n")
    with pytest.raises(ValueError, match="unknown setting"):
        config_from_args(build_parser().parse_args(["train", "--config", str(toml)]))
    with pytest.raises(ValueError, match="recipe"):
        TrainConfig(recipe="nope").resolved()



def test_image_folder_run_with_labels_writes_previews_and_samples_by_class(tmp_path):
    from PIL import Image

    for cls in ("a", "b", "c"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(np.random.default_rng(k).integers(0, 255, (9, 9, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{k}.jpg")
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "imgs"), "--image-size", "8", "--model", "base=8", "--steps", "2",
                 "--batch-size", "4", "--sample-every", "2", "--sample-nfe", "3", "--out", str(out), "--no-progress"]) == 0
    from PIL import Image as I

    preview = I.open(out / "samples" / "step_0000002.png")
    assert preview.size[0] > 3 * 32  # three classes side by side, upscaled
    model = load_model(str(out))
    assert model.num_classes == 3 and model.shape == (3, 8, 8) and model.kind == "image"
    assert main(["sample", "--checkpoint", str(out), "-n", "6", "--label", "2", "--nfe", "4", "--out",
                 str(tmp_path / "s.npz"), str(tmp_path / "s.png")]) == 0
    saved = np.load(tmp_path / "s.npz")
    assert saved["samples"].shape == (6, 3, 8, 8) and saved["labels"].tolist() == [2] * 6
    assert np.allclose(saved["raw"], (saved["samples"] + 1) * 127.5, atol=1e-3)


def test_a_run_folder_has_one_writer_and_stale_locks_and_temporaries_are_cleared(tmp_path):
    out = tmp_path / "run"
    first = Trainer(small_config(out))
    with pytest.raises(ValueError, match="in use by process"):
        Trainer(small_config(out))
    del first  # the lock goes with its trainer (and the folder it made, still empty)
    assert not out.exists()
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".lock").write_text(f"{socket.gethostname()} {int(dead.stdout)}\n")   # a killed run's lock
    (out / ".tmp-abc.safetensors").write_bytes(b"half a checkpoint")               # and its temporary
    trainer = Trainer(small_config(out, steps=3))
    assert not (out / ".tmp-abc.safetensors").exists()
    trainer.fit()
    assert not (out / ".lock").exists() and (out / "checkpoint.safetensors").exists()


@pytest.mark.slow
def test_a_second_train_into_a_running_runs_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "sdeflow", "train", *SMALL, "--steps", "100000", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        for _ in range(600):
            if (out / ".lock").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        second = cli("train", *SMALL, "--steps", "5", "--out", str(out))
        assert second.returncode == 1 and "in use by process" in second.stderr and len(second.stderr.splitlines()) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 0


def test_the_classifier_objective_trains_a_noise_aware_classifier_that_resumes(tmp_path):
    """sdeflow train --objective classifier: cross-entropy on noised digits falls, the run resumes like
    any other, and the checkpoint loads as a classifier of log p_t(c | x_t)."""
    from sdeflow.pretrained import load_classifier

    base = ["train", "--objective", "classifier", "--data", "digits", "--out", str(tmp_path / "c"), "--model", "width=8",
            "--model", "features=16", "--time-density", "uniform", "--batch-size", "64", "--lr", "2e-3", "--warmup", "5",
            "--no-progress"]
    cfg = TrainConfig(data="digits", objective="classifier", out=str(tmp_path / "h"), model={"width": 8, "features": 16},
                      time_density="uniform", batch_size=64, lr=2e-3, warmup=5)
    trainer = Trainer(cfg, progress=False)
    x, labels = trainer.data.x[:512], trainer.data.labels[:512]
    t = torch.full((512,), 0.3, dtype=torch.float64)

    def held_out():
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
        xt = trainer.schedule.alpha(t).float()[:, None, None, None] * x + 0.3 * noise
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(trainer.classifier.logits(xt, t), labels))

    before = held_out()
    for step in range(60):
        trainer.train_step(step)
    assert held_out() < 0.85 * before  # from chance (log 10 = 2.30)
    assert main([*base, "--steps", "20"]) == 0
    assert main([*base, "--steps", "40", "--resume"]) == 0
    clf = load_classifier(str(tmp_path / "c"))
    lp = clf(x[:16], 0.5, labels[:16])
    assert lp.shape == (16,) and bool((lp <= 0).all())
    with pytest.raises(ValueError, match="architecture"):
        TrainConfig(objective="classifier", architecture="unet").resolved()
    with pytest.raises(ValueError, match="labelled images"):
        Trainer(TrainConfig(data="moons", objective="classifier", out=str(tmp_path / "m")), progress=False)

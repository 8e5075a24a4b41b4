import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sdeflow.cli.main import main
from sdeflow.registry import GUIDANCE_METHODS


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sdeflow", *args], capture_output=True, text=True, cwd=cwd)


def test_help_everywhere(cli_here):
    top = run("--help")  # the installed entry point, in a new interpreter
    assert top.returncode == 0 and "demo" in top.stdout and "list" in top.stdout
    for cmd in ["demo", "sample", "list", "train", "restore", "export", "likelihood", "edit"]:
        r = cli_here(cmd, "--help")
        assert r.returncode == 0 and "usage: sdeflow " + cmd in r.stdout


def test_list_shows_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ["vp-linear", "rectified-flow", "heun", "ddim", "karras", "logsnr"]:
        assert word in out


def test_bad_arguments_give_one_line_errors(cli_here):
    r = run("demo", "--sampler", "nope")  # in a new interpreter: what a user's shell shows
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'nope'" in r.stderr and "heun" in r.stderr
    r = cli_here("demo", "--steps", "0")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and ">= 1" in r.stderr
    r = cli_here("demo", "--grid", "nope")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "karras" in r.stderr


def test_demo_reports_error_and_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "sub" / "demo.png"
    assert main(["demo", "--num", "300", "--nfe", "9", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "NFE 9" in text and "sliced W2" in text and "endpoint error" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["demo.png"]  # atomic write leaves no temporary


def test_demo_error_shrinks_with_nfe(capsys):
    """The demo's reported endpoint error is a real measurement: more steps, less error."""
    from types import SimpleNamespace

    from sdeflow.cli.demo import run_demo

    base = dict(sampler="heun", schedule="rectified-flow", grid="uniform", steps=None, num=200, seed=0, out="")
    coarse = run_demo(SimpleNamespace(**base, nfe=5))
    fine = run_demo(SimpleNamespace(**base, nfe=39))
    assert coarse["nfe"] == 5 and fine["nfe"] == 39
    assert fine["endpoint_rms"] < coarse["endpoint_rms"] / 4


def test_sample_writes_npz_with_counted_nfe(tmp_path):
    import numpy as np

    out = tmp_path / "s.npz"
    assert main(["sample", "--problem", "image-mixture", "--num", "3", "--sampler", "dpm-solver++-3m",
                 "--nfe", "6", "--out", str(out)]) == 0
    data = np.load(out)
    assert data["samples"].shape == (3, 3, 32, 32) and int(data["nfe"]) == 6 and np.isfinite(data["samples"]).all()
    assert main(["sample", "--problem", "ring-2d", "--grid", "1,0.4,0", "--num", "5", "--out", str(out)]) == 0
    assert np.load(out)["ts"].tolist() == [1.0, 0.4, 0.0]


def test_sample_bad_combinations_are_one_line_errors(cli_here):
    r = cli_here("sample", "--problem", "ring-2d", "--schedule", "edm", "--grid", "trailing", "--out", "")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "discrete" in r.stderr
    r = cli_here("sample", "--problem", "ring-2d", "--grid", "0,1", "--out", "")
    assert r.returncode == 1 and "decreasing" in r.stderr
    r = cli_here("sample", "--problem", "nope")
    assert r.returncode == 2 and "ring-2d" in r.stderr


@pytest.mark.parametrize("noise", ["generator", "seeded", "brownian"])
def test_stochastic_sampling_is_reproducible_from_the_seed(tmp_path, noise):
    paths = [tmp_path / f"{k}.npz" for k in range(3)]
    for path, seed in zip(paths, [1, 1, 2]):
        assert main(["sample", "--problem", "ring-2d", "--sampler", "sde-dpm-solver++-2m", "--num", "6", "--nfe", "8", "--noise", noise,
                     "--seed", str(seed), "--out", str(path)]) == 0
    a, b, c = (np.load(p)["samples"] for p in paths)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_demo_of_a_stochastic_sampler_reports_the_distribution_only(capsys):
    assert main(["demo", "--sampler", "ddpm", "--num", "300", "--nfe", "30", "--out", ""]) == 0
    out = capsys.readouterr().out
    assert "judged by its distribution only" in out and "endpoint" not in out


BARE = ["train", "--data", "moons", "--toy-size", "200", "--no-progress"]  # steps and model left to a config file
TRAIN = [*BARE, "--model", "width=8", "--steps", "2"]


def _bad_inputs(tmp):
    """(name, argv, files to create first): every kind of input a user can get wrong."""
    (tmp / "afile").write_text("x")
    (tmp / "folder").mkdir()
    (tmp / "steps-text.toml").write_text('steps = "many"\n')
    (tmp / "model-3.toml").write_text("model = 3\n")
    (tmp / "steps-real.toml").write_text("steps = 10.5\n")
    (tmp / "broken.yaml").write_text("steps: [1, 2\nlr: 3\n")
    np.savez(tmp / "good.npz", x=np.zeros((40, 2), np.float32))
    (tmp / "truncated.npz").write_bytes((tmp / "good.npz").read_bytes()[:150])
    (tmp / "good.npz").unlink()
    unwritable = str(tmp / "afile" / "x.png")  # its folder is a file: no user can write there
    corrupt = _corrupted_checkpoints(tmp)
    np.save(tmp / "empty.npy", np.zeros((0, 2), np.float32))
    (tmp / "garbage.npy").write_bytes(b"\x00" * 64)
    from sdeflow.pretrained import FOLDER

    cases = [
        ("export-over-its-input", ["export", str(tmp / "run"), str(tmp / "run" / "checkpoint.safetensors")]),
        ("export-over-a-training-checkpoint", ["export", "moons", str(tmp / "run" / "checkpoint.safetensors")]),
        ("tune-into-the-package", ["tune", "--checkpoint", "moons", "--out", os.path.join(FOLDER, "moons.grids.json")]),
        ("grid-times-with-steps", ["sample", "--problem", "ring-2d", "--grid", "1,0.5,0", "--steps", "5", "--out", ""]),
        ("grid-times-with-nfe", ["sample", "--problem", "ring-2d", "--grid", "1,0.5,0", "--nfe", "5", "--out", ""]),
        ("guidance-negative", ["sample", "--guidance", "-2", "--out", ""]),
        ("restore-sampler-unused", ["restore", "--method", "ddrm", "--sampler", "ddim", "--out", ""]),
        ("restore-noise-nan", ["restore", "--noise-std", "nan", "--out", ""]),
        ("restore-input-garbage", ["restore", "--input", str(tmp / "garbage.npy"), "--out", ""]),
        ("edit-more-than-there-are", ["edit", "--from", "3", "--to", "8", "-n", "500", "--out", ""]),
        ("edit-guidance-negative", ["edit", "--from", "3", "--to", "8", "--guidance", "-1", "--out", ""]),
        ("resume-nothing", [*TRAIN, "--out", str(tmp / "new-run"), "--resume"]),
        ("train-empty-data", [*TRAIN[:1], "--data", str(tmp / "empty.npy"), *TRAIN[3:], "--out", str(tmp / "r9")]),
        ("train-garbage-data", [*TRAIN[:1], "--data", str(tmp / "garbage.npy"), *TRAIN[3:], "--out", str(tmp / "r10")]),
        ("model-list-unclosed", [*TRAIN, "--out", str(tmp / "r11"), "--data", "digits", "--model", "mults=[1,2"]),
        ("model-negative-base", [*TRAIN, "--out", str(tmp / "r12"), "--data", "digits", "--model", "base=-4"]),
        ("skip-nonfinite-negative", [*TRAIN, "--out", str(tmp / "r13"), "--skip-nonfinite", "-1"]),
        *[(f"checkpoint-{name}", ["sample", "--checkpoint", path, "--out", ""]) for name, path in corrupt.items()],
        ("out-unwritable", ["sample", "--problem", "ring-2d", "--out", unwritable.replace(".png", ".npz")]),
        ("out-folder", ["sample", "--problem", "ring-2d", "--out", str(tmp / "folder")]),
        ("out-jpg", ["sample", "--out", str(tmp / "x.jpg")]),
        ("demo-out-folder", ["demo", "--out", str(tmp / "folder")]),
        ("device-tpu", ["sample", "--device", "tpu"]),
        ("toml-text", [*BARE, "--out", str(tmp / "r1"), "--config", str(tmp / "steps-text.toml")]),
        ("toml-model", [*BARE, "--out", str(tmp / "r2"), "--config", str(tmp / "model-3.toml")]),
        ("toml-real", [*BARE, "--out", str(tmp / "r3"), "--config", str(tmp / "steps-real.toml")]),
        ("yaml-syntax", [*BARE, "--out", str(tmp / "r4"), "--config", str(tmp / "broken.yaml")]),
        ("model-width", [*TRAIN, "--out", str(tmp / "r5"), "--model", "width=-3"]),
        ("toy-size", [*TRAIN, "--out", str(tmp / "r6"), "--toy-size", "0"]),
        ("truncated-npz", [*TRAIN[:1], "--data", str(tmp / "truncated.npz"), *TRAIN[3:], "--out", str(tmp / "r7")]),
        ("train-sampler", [*TRAIN, "--out", str(tmp / "r8"), "--sample-sampler", "foo"]),
        ("train-out-file", [*TRAIN, "--out", str(tmp / "afile")]),
        ("restore-num", ["restore", "--num", "0", "--out", ""]),
        ("restore-nfe", ["restore", "--nfe", "0", "--out", ""]),
        ("restore-out", ["restore", "--out", str(tmp / "folder")]),
        ("export-unwritable", ["export", "moons", unwritable.replace(".png", ".safetensors")]),
        ("export-suffix", ["export", "moons", str(tmp / "w.bin")]),
        ("classifier", ["sample", "--checkpoint", "digits-classifier", "--out", ""]),
        ("grid-short", ["sample", "--problem", "ring-2d", "--grid", "1,0.5", "--out", str(tmp / "s.npz")]),
        ("grid-below-index-0", ["sample", "--problem", "ring-2d", "--schedule", "ddpm-linear", "--grid", "1,0.0005,0",
                                "--out", str(tmp / "s.npz")]),
        ("nfe-zero", ["sample", "--nfe", "0"]),
        ("guidance-without-scale", ["sample", "--guidance-method", "apg", "--out", ""]),
        ("guidance-interval", ["sample", "--guidance", "3", "--guidance-interval", "5,1", "--out", ""]),
        ("guidance-option", ["sample", "--guidance", "3", "--guidance-option", "eta", "--out", ""]),
        ("guidance-option-unknown", ["sample", "--guidance", "3", "--guidance-option", "foo=1", "--out", ""]),
        ("guidance-cfgpp-scale", ["sample", "--guidance", "3", "--guidance-method", "cfg++", "--out", ""]),
        ("diagnose-both", ["diagnose", "--checkpoint", "moons", "--problem", "ring-2d", "--out", ""]),
        ("diagnose-schedule", ["diagnose", "--schedule", "edm", "--out", ""]),
        ("diagnose-num", ["diagnose", "--problem", "ring-2d", "-n", "1", "--out", ""]),
        ("diagnose-probes", ["diagnose", "--problem", "ring-2d", "--probes", "0", "--out", ""]),
        ("diagnose-out", ["diagnose", "--problem", "ring-2d", "--out", unwritable]),
        ("teleport-time", ["sample", "--teleport", "2", "--out", ""]),
        ("teleport-word", ["sample", "--teleport", "soon", "--out", ""]),
        ("teleport-user-grid", ["sample", "--problem", "ring-2d", "--teleport", "auto", "--grid", "1,0.5,0", "--out", ""]),
        ("teleport-data-alone", ["sample", "--teleport-data", str(tmp / "afile"), "--out", ""]),
        ("teleport-fixed-start-grid", ["sample", "--problem", "ring-2d", "--teleport", "0.5", "--grid", "shifted",
                                       "--out", ""]),
        ("teleport-data-garbled", ["sample", "--checkpoint", "moons", "--teleport", "auto", "--teleport-data",
                                   str(tmp / "afile"), "--out", ""]),
        ("teleport-tuned-grid", ["sample", "--checkpoint", "moons", "--grid", "tuned", "--teleport", "auto", "--out", ""]),
        ("tune-start-coefficients", ["tune", "--checkpoint", "moons", "--start", "leading", "--coefficients"]),
        ("tune-teleport-data-top", ["tune", "--checkpoint", "moons", "--teleport-data", str(tmp / "afile")]),
        ("tune-trim", ["tune", "--checkpoint", "moons", "--trim", "0.5"]),
        ("train-fokker-planck", ["train", "--data", "moons", "--fokker-planck", "-1", "--out", str(tmp / "fp")]),
        ("tune-holdout", ["tune", "--checkpoint", "moons", "--holdout", "1.5"]),
        ("tune-holdout-all", ["tune", "--checkpoint", "moons", "--samples", "50", "--holdout", "50"]),
        ("tune-check-draws", ["tune", "--checkpoint", "moons", "--check-draws", "2.5"]),
        ("tune-check-draws-all", ["tune", "--checkpoint", "moons", "--samples", "50", "--holdout", "20", "--check-draws",
                                  "30"]),
        ("guidance-cfgpp-sampler", ["sample", "--guidance", "0.5", "--guidance-method", "cfg++", "--sampler", "rk45",
                                    "--out", ""]),
        ("guidance-unlabelled", ["sample", "--checkpoint", "moons", "--guidance", "3", "--out", ""]),
        ("guidance-problem", ["sample", "--problem", "ring-2d", "--guidance", "3", "--out", ""]),
        ("guidance-guide", ["sample", "--guidance", "3", "--guide", "digits-small", "--out", ""]),
        ("guidance-nan", ["sample", "--guidance", "nan", "--out", ""]),
        ("likelihood-both", ["likelihood", "--problem", "ring-2d", "--checkpoint", "moons"]),
        ("likelihood-schedule", ["likelihood", "--schedule", "edm"]),
        ("likelihood-num", ["likelihood", "--problem", "ring-2d", "-n", "0"]),
        ("likelihood-tol", ["likelihood", "--problem", "ring-2d", "--tol", "-1"]),
        ("likelihood-too-many", ["likelihood", "--checkpoint", "digits", "-n", "5000"]),
        ("likelihood-trace", ["likelihood", "--trace", "jacobian"]),
        ("edit-same-class", ["edit", "--from", "3", "--to", "3"]),
        ("edit-class-range", ["edit", "--from", "3", "--to", "10"]),
        ("edit-input-missing", ["edit", "--from", "3", "--to", "8", "--input", str(tmp / "none.png")]),
        ("edit-input-shape", ["edit", "--from", "3", "--to", "8", "--input", str(tmp / "afile")]),
        ("edit-start", ["edit", "--from", "3", "--to", "8", "--start", "1.5"]),
        ("edit-unconditional", ["edit", "--checkpoint", "moons", "--from", "0", "--to", "1", "--out", ""]),
        ("edit-out-jpg", ["edit", "--from", "3", "--to", "8", "--out", str(tmp / "x.jpg")]),
        ("edit-sampler", ["edit", "--from", "3", "--to", "8", "--sampler", "ddpm"]),
        ("edit-guidance-nan", ["edit", "--from", "3", "--to", "8", "--guidance", "nan"]),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append(("device-cuda", ["sample", "--device", "cuda"]))
    return cases


def _corrupted_checkpoints(tmp) -> dict[str, str]:
    """A run folder with a training checkpoint (``run``), and copies of the shipped moons model with one
    thing wrong each, by name."""

    from safetensors.torch import save_file

    from sdeflow.pretrained import path_of
    from sdeflow import checkpoint as ckpt

    tensors, meta = ckpt.load(path_of("moons"))
    (tmp / "run").mkdir()
    ckpt.save(str(tmp / "run" / "checkpoint.safetensors"), tensors, {**meta, "optimizer": {"param_groups": []}})
    first = sorted(tensors)[0]
    variants = {
        "int32-weights": ({**tensors, first: tensors[first].to(torch.int32)}, meta),
        "nan-weights": ({**tensors, first: tensors[first] * float("nan")}, meta),
        "no-schedule": (tensors, {**meta, "config": {k: v for k, v in meta["config"].items() if k != "schedule"}}),
        "data-without-shape": (tensors, {**meta, "data": {k: v for k, v in meta["data"].items() if k != "shape"}}),
        "data-without-kind": (tensors, {**meta, "data": {k: v for k, v in meta["data"].items() if k != "kind"}}),
        "data-without-scale": (tensors, {**meta, "data": {k: v for k, v in meta["data"].items() if k != "scale"}}),
        "data-scale-zero": (tensors, {**meta, "data": {**meta["data"], "scale": 0}}),
        "data-shape-mismatch": (tensors, {**meta, "data": {**meta["data"], "shape": [3]}}),
        "config-a-list": (tensors, {**meta, "config": [1, 2]}),
        "data-a-list": (tensors, {**meta, "data": [2]}),
        "network-bad-width": (tensors, {**meta, "network": {**meta["network"], "width": "wide"}}),
    }
    out = {}
    for name, (t, m) in variants.items():
        out[name] = str(tmp / f"{name}.safetensors")
        ckpt.save(out[name], t, {k: v for k, v in m.items() if k != "format"})
    out["metadata-a-list"] = str(tmp / "metadata-a-list.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, out["metadata-a-list"], metadata={"sdeflow": "[1, 2]"})
    return out


def _listing(folder):
    return sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*"))


@pytest.mark.parametrize("case", [c[0] for c in _bad_inputs(__import__("pathlib").Path(__import__("tempfile").mkdtemp()))])
def test_bad_input_is_one_line_with_no_traceback_and_changes_nothing(tmp_path, case, monkeypatch, capsys):
    argv = dict(_bad_inputs(tmp_path))[case]
    before = _listing(tmp_path)
    monkeypatch.chdir(tmp_path)
    try:  # in process: any exception other than the boundary's answer fails the test, as a traceback would
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code in (1, 2), (code, err)
    assert len(lines) == 1 and lines[0].startswith("sdeflow"), err
    assert out == "", out  # refused before any work started
    assert _listing(tmp_path) == before


def test_steps_for_nfe_is_the_largest_step_count_within_the_budget():
    """Against a brute-force count for samplers with 1, 2 and 3 evaluations per step, restarts and
    correctors, at budgets where the prediction from small plans and the bisection both act."""
    from sdeflow.registry import GRIDS, SAMPLERS, steps_for_nfe
    from sdeflow.schedules import VPLinear

    sch = VPLinear()
    for name in ["heun", "dpm-solver++-3m", "unipc-3", "restart", "dpm-solver-3", "edm-churn", "pc-langevin"]:
        for nfe in [1, 2, 3, 7, 65, 130, 257]:
            n = steps_for_nfe(SAMPLERS[name](), sch, "karras", nfe)
            cost = [SAMPLERS[name]().prepare(sch, GRIDS["karras"](k, sch)).nfe for k in (n, n + 1)]
            assert (cost[0] <= nfe or n == 1) and cost[1] > nfe, (name, nfe, n, cost)


def test_a_grid_that_stops_short_runs_only_when_asked(tmp_path, capsys):
    out = tmp_path / "partial.npz"
    assert main(["sample", "--problem", "ring-2d", "--grid", "1,0.5", "--out", str(out)]) == 1
    assert "--partial" in capsys.readouterr().err and not out.exists()
    assert main(["sample", "--problem", "ring-2d", "--grid", "1,0.5", "--partial", "--num", "20", "--out", str(out)]) == 0
    assert np.load(out)["ts"].tolist() == [1.0, 0.5]


@pytest.mark.parametrize("method", sorted(GUIDANCE_METHODS))
def test_guided_sampling_of_the_shipped_model_reports_forwards(tmp_path, capsys, method):
    """Every method of the table runs from the command line; a batched CFG evaluation is two forwards, and
    an interval that excludes the noisiest levels skips their unconditional passes. Methods guided by a
    classifier's gradient report no forward count."""
    scale = str(min(2.0, GUIDANCE_METHODS.info(method).max_scale / 2))
    argv = ["sample", "--guidance", scale, "--guidance-method", method, "--nfe", "6", "-n", "12",
            "--out", str(tmp_path / "g.npz"), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    forwards = float(out.split("network forwards per sample")[0].split(", ")[-1]) if "forwards" in out else None
    if GUIDANCE_METHODS.info(method).model == "classifier":
        assert forwards is None  # one denoiser pass plus a classifier gradient per evaluation
    else:
        assert forwards == 12
    assert np.load(tmp_path / "g.npz")["samples"].shape == (12, 1, 8, 8)
    if method == "cfg":
        assert main([*argv, "--guidance-interval", "0,2"]) == 0
        assert 6 < float(capsys.readouterr().out.split("network forwards per sample")[0].split(", ")[-1]) < 12


def test_guidance_on_a_labelled_problem_moves_samples_to_their_class(tmp_path, capsys):
    from sdeflow.registry import PROBLEMS, SCHEDULES

    mix, _ = PROBLEMS["labelled-ring-2d"]()
    found = {}
    for w in ("1", "4"):
        assert main(["sample", "--problem", "labelled-ring-2d", "--label", "2", "--guidance", w, "-n", "400",
                     "--out", str(tmp_path / f"w{w}.npz")]) == 0
        x = torch.as_tensor(np.load(tmp_path / f"w{w}.npz")["samples"]).double()
        found[w] = float(mix.class_log_prob(x, SCHEDULES["vp-linear"](), 0.0, 2).exp().mean())
    assert found["1"] > 0.9 and found["4"] > found["1"]


def test_likelihood_on_an_exact_problem_reports_its_error(capsys):
    assert main(["likelihood", "--problem", "ring-2d", "-n", "8"]) == 0
    out = capsys.readouterr().out
    assert "NLL" in out and "bits per dimension" in out and "evaluations" in out
    err = float(out.split("max error ")[1].split()[0])
    assert err < 1e-4


def test_likelihood_of_a_shipped_model(capsys):
    assert main(["likelihood", "--checkpoint", "moons", "-n", "8", "--method", "rk4", "--steps", "16"]) == 0
    out = capsys.readouterr().out
    assert "first 8 points of moons" in out and "2 dimensions" in out and "trace: exact" in out


def test_edit_moves_digits_to_the_target_class(tmp_path, capsys):
    """Both editors turn real 3s into what the shipped classifier reads as 8s, the exact inversion's
    round trip is at round-off, and the files hold the input and each edit."""
    from PIL import Image

    png, npz = str(tmp_path / "e.png"), str(tmp_path / "e.npz")
    assert main(["edit", "--from", "3", "--to", "8", "--steps", "8", "-n", "4", "--out", png, npz]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0].split(" (")[0]: line for line in out.splitlines() if "NFE" in line}
    for name in ("inversion", "FlowEdit"):
        assert float(lines[name].split("classifier p(8) ")[1].split()[0].rstrip(";")) > 0.9, out
    assert float(lines["inversion"].split("round trip under 3: ")[1].split()[0]) < 1e-4, out
    arrays = np.load(npz)
    assert arrays["input"].shape == arrays["inversion"].shape == arrays["flowedit"].shape == (4, 1, 8, 8)
    assert np.sqrt(((arrays["flowedit"] - arrays["input"]) ** 2).mean()) > 0.1
    with Image.open(png) as img:
        assert img.size[0] > 400


def test_teleport_skips_the_first_steps_and_stores_the_models_gaussian(tmp_path, capsys, monkeypatch):
    """--teleport auto on an exact problem starts its grid below the top, spending the whole budget there; on a
    checkpoint the fitted Gaussian is stored in the user folder (a shipped model) and read back the next time.
    (What the skip buys is measured in tests/test_teleport.py.)"""
    monkeypatch.setenv("SDEFLOW_HOME", str(tmp_path / "home"))
    out = tmp_path / "r.npz"
    assert main(["sample", "--problem", "ring-2d", "--teleport", "auto", "--nfe", "6", "--out", str(out), "--no-progress"]) == 0
    said = capsys.readouterr().out
    t = float(said.split("teleported to t = ")[1].split()[0].rstrip(","))
    assert 0.3 < t < 1.0 and "NFE 6" in said
    ts = np.load(out)["ts"]
    assert ts[0] == pytest.approx(t, abs=1e-4) and ts[-1] == 0.0 and len(ts) == 7
    assert main(["sample", "--checkpoint", "moons", "--teleport", "0.7", "--nfe", "4", "-n", "16", "--out", "",
                 "--no-progress"]) == 0
    assert "teleported to t = 0.7" in capsys.readouterr().out
    stored = tmp_path / "home" / "tuned" / "moons.teleport.safetensors"
    assert stored.exists()
    before = stored.stat().st_mtime_ns
    assert main(["sample", "--checkpoint", "moons", "--teleport", "0.7", "--nfe", "4", "-n", "16", "--out", "",
                 "--no-progress"]) == 0
    assert stored.stat().st_mtime_ns == before  # read back, not fitted again


def test_diagnose_finds_the_exact_answers_on_an_exact_problem(tmp_path, capsys):
    """On the exact ring the score solves the Fokker-Planck equation and is a gradient field at every level,
    the data are 2-dimensional, and the Gaussian explains the field at the highest level; the picture is
    written."""
    from sdeflow.cli.diagnose_cmd import run_diagnose
    from sdeflow.cli.main import build_parser

    args = build_parser().parse_args(["diagnose", "--problem", "ring-2d", "--levels", "5", "--out", str(tmp_path / "d.png")])
    got = run_diagnose(args)
    assert len(got["rows"]) == 5
    for _, level, fp, asym, explained, curl in got["rows"]:
        assert fp < 1e-5 and asym < 1e-12 and curl < 1e-9  # loop curl: 8-point trapezoid, measured below 1e-10
    assert got["rows"][0][4] > 0.999
    assert torch.allclose(got["flipd"], torch.full_like(got["flipd"], 2.0), atol=0.05)
    assert (tmp_path / "d.png").exists() and "intrinsic dimension" in capsys.readouterr().out

import subprocess
import sys

import numpy as np
import pytest

from sdeflow.cli.main import main


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sdeflow", *args], capture_output=True, text=True, cwd=cwd)


def test_help_everywhere():
    top = run("--help")
    assert top.returncode == 0 and "demo" in top.stdout and "list" in top.stdout
    for cmd in ["demo", "sample", "list", "train", "restore", "export"]:
        r = run(cmd, "--help")
        assert r.returncode == 0 and "usage: sdeflow " + cmd in r.stdout


def test_list_shows_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ["vp-linear", "rectified-flow", "heun", "ddim", "karras", "logsnr"]:
        assert word in out


def test_bad_arguments_give_one_line_errors():
    r = run("demo", "--sampler", "nope")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'nope'" in r.stderr and "heun" in r.stderr
    r = run("demo", "--steps", "0")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and ">= 1" in r.stderr
    r = run("demo", "--grid", "nope")
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


def test_sample_bad_combinations_are_one_line_errors():
    r = run("sample", "--problem", "ring-2d", "--schedule", "edm", "--grid", "trailing", "--out", "")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "discrete" in r.stderr
    r = run("sample", "--problem", "ring-2d", "--grid", "0,1", "--out", "")
    assert r.returncode == 1 and "decreasing" in r.stderr
    r = run("sample", "--problem", "nope")
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

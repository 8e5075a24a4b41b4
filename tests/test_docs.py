"""Every code block of the README and the docs runs as written.

Blocks are fenced with their language: ``python`` blocks run in order in one namespace per document;
``bash`` blocks run line by line (``sdeflow`` commands in this process, with small sizes where a
command trains or fits, see ``SMALL``; ``python benchmarks/...`` lines have their arguments parsed;
``pip install`` lines name extras that exist); a ``toml`` block is the ``run.toml`` the next command
reads; ``text`` blocks are output. Every document runs in a fresh folder of its own, as a reader
following it would, so each document says what it needs (a run trained by an earlier block).
An unlabelled fence is refused: a new block declares what it is. A block that compiles
(``torch.compile``, ``.compile()``: a minute on a CPU) runs in the slow set only.
"""

from __future__ import annotations

import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)\n(.*?)^```", re.S | re.M)
RUN, SHOWN = ("python", "bash"), ("text", "toml")

#: Flags appended to a documented command so the test runs it at a small size (argparse: the last wins).
SMALL = {
    "train": ["--steps", "3", "--batch-size", "16", "--sample-every", "0", "--toy-size", "256", "--pairs", "32",
              "--no-progress"],
    "tune": ["--samples", "10", "--teacher-steps", "12", "--starts", "0", "--iterations", "2", "--rounds", "1"],
    "sample": ["-n", "8", "--no-progress"],
    "restore": ["--nfe", "10", "--no-progress"],
    "likelihood": ["-n", "4"],
    "edit": ["--steps", "4"],
    "demo": ["-n", "200", "--no-progress"],
    "diagnose": ["-n", "2", "--levels", "2", "--gap-samples", "8"],
}


def blocks(doc: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer((ROOT / doc).read_text())]


def test_every_block_declares_its_language():
    for doc in DOCUMENTS:
        for lang, body in blocks(doc):
            assert lang in RUN + SHOWN, f"{doc}: a ``` block without a language ({lang!r}): {body[:60]!r}"


@pytest.fixture
def reader(tmp_path):
    """The folder a reader works in, with the files the docs ask them to bring (a picture of a 3)."""
    from sdeflow.data import digits
    from sdeflow.data.pictures import save_samples

    folder = tmp_path
    d = digits()
    for name in ("three.png", "my_digit.png", "picture.png"):
        save_samples(d.x[d.labels == 3][:1], str(folder / name), "image", nrow=1)
    return folder


def _commands(body: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, ``&&`` chains and
    ``&`` (background) lists split, leading ``VAR=value`` assignments removed."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = next((i for i, w in enumerate(words) if w in ("&&", "&")), len(words))
            cmd, words = words[:cut], words[cut + 1:]
            while cmd and re.fullmatch(r"[A-Z_]+=\S*", cmd[0]):
                cmd = cmd[1:]
            if cmd:
                out.append(cmd)
    return out


def _sdeflow_args(cmd: list[str]) -> list[str] | None:
    """The sdeflow arguments of ``sdeflow ...``, ``python -m sdeflow ...`` or ``torchrun ... -m sdeflow ...``."""
    if cmd[0] == "sdeflow":
        return cmd[1:]
    if "-m" in cmd and cmd[cmd.index("-m") + 1:cmd.index("-m") + 2] == ["sdeflow"]:
        return cmd[cmd.index("-m") + 2:]
    return None


def _run_command(cmd: list[str], monkeypatch, where: str) -> None:
    from sdeflow.cli.main import main

    args = _sdeflow_args(cmd)
    if args is not None:
        small = SMALL.get(args[0], []) if args else []
        if args[:1] == ["tune"] and "--verify" in args:  # a verified pilot's pool holds more than its pilot of 32
            small = [*small, "--samples", "48", "--verify", "8"]
        code = main([*args, *small])
        assert code == 0, f"{where}: `{shlex.join(cmd)}` exited with {code}"
    elif cmd[:2] == ["pip", "install"]:
        import tomllib

        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for word in cmd[2:]:
            for extra in re.findall(r"\.\[([\w,]+)\]", word):
                assert set(extra.split(",")) <= set(extras), f"{where}: no extra {extra!r} in pyproject.toml"
    elif cmd[:2] == ["python", "-m"] and cmd[2] == "pytest":
        pass  # this suite
    elif cmd[0] == "python" and cmd[1].startswith("benchmarks/"):
        return  # parsed by test_documented_benchmark_commands_parse (slow: each script imports its peers)
    else:
        raise AssertionError(f"{where}: the docs test does not know how to run `{shlex.join(cmd)}`")


def compiles(body: str) -> bool:
    return bool(re.search(r"torch\.compile\(|\.compile\(\)", body))


#: Documents whose blocks take long on 2 cores even at small sizes (they run in the slow set):
#: tuning.md fits grids and coefficients on a UNet through four commands (minutes); diagnostics.md,
#: inversion.md, likelihood.md, inverse.md and fewstep.md run the shipped digits models through their
#: commands (3-10 s each; the methods themselves are checked in the default run by test_diagnostics,
#: test_inversion, test_likelihood, test_inverse and test_fewstep).
SLOW_DOCS = {"docs/tuning.md", "docs/diagnostics.md", "docs/inversion.md", "docs/likelihood.md", "docs/inverse.md",
             "docs/fewstep.md"}


@pytest.mark.parametrize("doc", [pytest.param(d, marks=pytest.mark.slow)
                                 if d in SLOW_DOCS or any(compiles(b) for _, b in blocks(d)) else d for d in DOCUMENTS])
def test_the_blocks_of_each_document_run(doc, reader, monkeypatch, capsys):
    _run_document(doc, reader, monkeypatch, capsys, compiled=True)


@pytest.mark.parametrize("doc", [d for d in DOCUMENTS if any(compiles(b) for _, b in blocks(d))])
def test_the_blocks_of_a_compiling_document_run_up_to_the_compilation(doc, reader, monkeypatch, capsys):
    """The default run's share of a document whose later blocks compile: every block before the first
    compiling one."""
    _run_document(doc, reader, monkeypatch, capsys, compiled=False)


def _run_document(doc, reader, monkeypatch, capsys, compiled: bool) -> None:
    monkeypatch.chdir(reader)
    scope: dict = {"__name__": f"docs:{doc}"}
    ran = 0
    for k, (lang, body) in enumerate(blocks(doc)):
        where = f"{doc}, block {k + 1}"
        if not compiled and compiles(body):
            break
        if lang == "toml":
            (reader / "run.toml").write_text(body)
        elif lang == "python":
            for peer in re.findall(r"^\s*(?:from|import) (diffusers|flow_matching)\b", body, re.M):
                pytest.importorskip(peer)
            exec(compile(body, where, "exec"), scope)
            ran += 1
        elif lang == "bash":
            for cmd in _commands(body):
                _run_command(cmd, monkeypatch, where)
            ran += 1
    capsys.readouterr()
    if not ran:
        pytest.skip(f"{doc} has no code to run")


@pytest.mark.slow
def test_documented_benchmark_commands_parse():
    """A ``python benchmarks/X.py ARGS`` line of the docs: the script exists and accepts ARGS (argparse
    checks every value given before ``--help`` stops it)."""
    for doc in DOCUMENTS:
        for lang, body in blocks(doc):
            if lang != "bash":
                continue
            for cmd in _commands(body):
                if cmd[0] == "python" and cmd[1].startswith("benchmarks/"):
                    assert (ROOT / cmd[1]).is_file(), f"{doc}: no {cmd[1]}"
                    r = subprocess.run([sys.executable, *cmd[1:], "--help"], cwd=ROOT, capture_output=True, text=True)
                    assert r.returncode == 0, f"{doc}: `{shlex.join(cmd)}`: {r.stderr[-400:]}"


def test_the_readme_example_is_fifteen_lines_and_prints_what_it_says():
    code = [body for lang, body in blocks("README.md") if lang == "python"][0]
    assert len(code.strip().splitlines()) <= 15
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["result"].x.shape == (1000, 8) and scope["result"].nfe == 12  # the budget given to sf.recommended
    assert np.isfinite(float(scope["result"].x.sum())) and isinstance(scope["result"].x, torch.Tensor)

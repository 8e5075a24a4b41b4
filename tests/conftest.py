import io
import os
from contextlib import redirect_stderr, redirect_stdout
from types import SimpleNamespace

import pytest
import torch

from sdeflow.registry import SCHEDULES

if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per test process: the workers share the cores
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _user_folder(tmp_path_factory):
    """What sdeflow writes for shipped models (tuned grids) goes to a temporary user folder, never to the
    tester's home; subprocesses inherit it."""
    os.environ["SDEFLOW_HOME"] = str(tmp_path_factory.mktemp("sdeflow-home"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=sorted(SCHEDULES))
def schedule(request):
    return SCHEDULES[request.param]()


@pytest.fixture
def cli_here(monkeypatch):
    """``cli_here(*args, cwd=None)``: run ``sdeflow *args`` in this process (a new interpreter costs seconds of
    imports); returns ``returncode``, ``stdout`` and ``stderr`` like :func:`subprocess.run`. An exception
    that ``main`` lets escape (a traceback a user would see) fails the test."""
    from sdeflow.cli.main import main

    def run(*args, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return SimpleNamespace(returncode=code or 0, stdout=out.getvalue(), stderr=err.getvalue())
    return run

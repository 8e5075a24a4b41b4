"""The house rules the layout keeps: names in the library, no upward imports, no import cycles
among samplers, one coefficient record per engine."""

import ast
import pathlib

import pytest

import sdeflow
from sdeflow import grids, schedules
from sdeflow.registry import SAMPLERS
from sdeflow.samplers import Multistep, SingleStep
from sdeflow.samplers.base import Affine, Tableau, Weights
from sdeflow.samplers.engine import step_infos
from sdeflow.samplers.sde import AffineStep

ROOT = pathlib.Path(sdeflow.__file__).parent


def _imports(path):
    """Modules a file imports anywhere (also inside functions), as dotted names."""
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_library_module_imports_the_command_line_layer():
    for path in ROOT.rglob("*.py"):
        if "cli" in path.relative_to(ROOT).parts or path.name == "__main__.py":
            continue
        assert not any(m.startswith("sdeflow.cli") for m in _imports(path)), path


def test_the_samplers_import_no_cycle():
    files = {f"sdeflow.samplers.{p.stem}": p for p in (ROOT / "samplers").glob("*.py") if p.stem != "__init__"}
    graph = {m: {d for d in _imports(p) if d in files and d != m} for m, p in files.items()}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", " -> ".join(path + [m])
        state[m] = "open"
        for d in graph[m]:
            visit(d, path + [m])
        state[m] = "done"

    for m in graph:
        visit(m, [])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_engine_samplers_declare_coefficients_as_named_records(name):
    sampler, sch = SAMPLERS[name](), schedules.VPLinear()
    ts = grids.uniform_grid(4, t_max=0.9)
    info = step_infos(sch, ts)[1]
    if isinstance(sampler, Multistep):
        assert isinstance(sampler.weights(sch, info, [info, step_infos(sch, ts)[0]], 2 if sampler.order > 1 else 1), Weights)
    elif isinstance(sampler, SingleStep):
        tab = sampler.tableau(sch, info)
        assert isinstance(tab, Tableau) and isinstance(tab.final, Weights)
    elif isinstance(sampler, AffineStep):
        assert isinstance(sampler.step_coefficients(info.a_t, info.s_t, info.a_s, info.s_s, info.t, info.s, sch), Affine)
    else:  # a composite or adaptive sampler plans and steps itself
        assert type(sampler).prepare is not sdeflow.samplers.Sampler.prepare and type(sampler).step is not sdeflow.samplers.Sampler.step


def test_the_code_passes_ruff_with_the_projects_selection():
    """pycodestyle and pyflakes (pyproject.toml's [tool.ruff]) over the package, the tests and the benchmarks."""
    import subprocess
    import sys

    pytest.importorskip("ruff")
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT.parent)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-500:]

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


def _tables():
    """Every name table of the library, from its home."""
    import sdeflow.analytic as analytic
    import sdeflow.data.datasets as datasets
    import sdeflow.grids as grids_module
    import sdeflow.guidance as guidance
    import sdeflow.inverse as inverse
    import sdeflow.models as models
    import sdeflow.parameterizations as parameterizations
    import sdeflow.samplers as samplers
    import sdeflow.schedules as schedules_module
    import sdeflow.training.densities as densities
    import sdeflow.training.losses as losses

    return {"samplers": samplers.SAMPLERS, "flow-map samplers": samplers.FLOW_MAP_SAMPLERS, "schedules": schedules_module.SCHEDULES,
            "grids": grids_module.GRIDS, "problems": analytic.PROBLEMS, "inverse methods": inverse.METHODS,
            "operators": inverse.OPERATORS, "guidance methods": guidance.METHODS, "parameterizations": parameterizations.PARAMETERIZATIONS,
            "densities": densities.DENSITIES, "weightings": losses.WEIGHTINGS, "architectures": models.ARCHITECTURES,
            "datasets": datasets.DATASETS}


def test_every_name_table_has_one_shape_and_every_entry_dispatches():
    """Each table is a NameTable (name -> factory, one-line summary); every listed name builds what its
    kind builds, so no description outlives its entry."""
    from sdeflow.names import NameTable
    from sdeflow.samplers import Sampler

    for label, table in _tables().items():
        assert isinstance(table, NameTable), label
        for name in table:
            assert table.summary(name).strip() and "\n" not in table.summary(name), (label, name)
            assert callable(table.lookup(name)), (label, name)
        with pytest.raises(ValueError, match="allowed"):
            table.lookup("no-such-name")
    for name, make in {**_tables()["samplers"], **_tables()["flow-map samplers"]}.items():
        assert isinstance(make(), Sampler), name
    for name in _tables()["schedules"]:
        assert isinstance(_tables()["schedules"][name](), schedules.Schedule), name
    for name in _tables()["grids"]:
        ts = _tables()["grids"][name](5, schedules.ddpm_linear() if name in ("linspace", "leading", "trailing") else
                                      schedules.VPLinear())
        assert float(ts[-1]) == 0.0 and bool((ts[1:] < ts[:-1]).all()), name
    from sdeflow.inverse import Operator
    for name, make in _tables()["operators"].items():
        assert isinstance(make((1, 8, 8), 0), Operator), name


def test_every_public_sampler_method_and_operator_is_registered():
    """A sampler class the package exports is reachable by name (engines, bases and wrappers that need
    another sampler aside); every posterior-sampling loop and denoiser transform of sdeflow.inverse is a
    method of solve; every operator class that a shape alone builds has a name."""
    import sdeflow.inverse as inverse
    import sdeflow.samplers as samplers
    from sdeflow.samplers import ALL_SAMPLERS

    abstract = {"Sampler", "Multistep", "SingleStep", "Reversible", "TwoStep", "FittedSampler"}
    named = {type(make()) for make in ALL_SAMPLERS.values()}
    named |= {type(s.predictor) for s in (m() for m in ALL_SAMPLERS.values()) if hasattr(s, "predictor")}
    for name in samplers.__all__:
        obj = getattr(samplers, name)
        if isinstance(obj, type) and issubclass(obj, samplers.Sampler) and name not in abstract:
            assert obj in named, f"{name} has no name in SAMPLERS"
    from sdeflow.inverse.projection import ddrm

    public = [inverse.daps, inverse.enkg, inverse.red_diff, inverse.repaint, inverse.twisted_smc, ddrm,
              inverse.MMPS, inverse.PiGDM, inverse.DPS, inverse.DDNM, inverse.DiffPIR]
    wrapped = [inverse.METHODS[m].wraps for m in inverse.METHODS]
    assert sorted(map(id, wrapped)) == sorted(map(id, public)), [getattr(w, "__name__", w) for w in wrapped]
    built = {type(make((1, 8, 8), 0)) for make in inverse.OPERATORS.values()}
    for cls in (inverse.Mask, inverse.Downsample, inverse.Blur, inverse.Identity, inverse.RandomProjection):
        assert cls in built, f"{cls.__name__} has no name in OPERATORS"

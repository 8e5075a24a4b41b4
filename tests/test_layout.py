"""The house rules the layout keeps: a declared order of layers that every import follows (also
inside functions), no import cycle, no private name used across modules, one coefficient record per
engine, one shape of name table, ruff."""

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


#: The layers of the package, lowest first: a module imports only from its own layer or lower ones (also
#: inside functions). The core (schedules to objectives) knows nothing of the applications above it.
LAYERS = [
    # core
    {"names", "shapes", "files", "metrics", "distributed", "profiling", "noise"},
    {"schedules"},
    {"parameterizations", "grids"},
    {"denoisers", "models"},
    {"samplers"},
    {"run"},
    {"replay"},
    {"sampling"},
    {"analytic", "bridges", "compiled", "diagnostics", "discrete", "generation", "guidance", "objectives", "teleport"},
    # applications
    {"data", "checkpoint"},
    {"inverse", "inversion", "likelihood", "reward", "adapters", "pretrained"},
    {"editing", "tuning"},
    {"training"},
    {"registry"},
    {"__init__"},
    {"cli", "__main__"},
]
LAYER = {unit: k for k, units in enumerate(LAYERS) for unit in units}


def _module(path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = ROOT.parent / name.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path):
    """``(module, name, line)`` of every sdeflow import of a file (also inside functions): ``module`` the
    imported module (``from pkg import submodule`` counts as the submodule), ``name`` the imported name
    (None for a module)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: no import at run time
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((sub, None, node.lineno) if _is_module(sub) else (mod, a.name, node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, None, node.lineno) for a in node.names)
    return [(m, n, line) for m, n, line in out if m == "sdeflow" or m.startswith("sdeflow.")]


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


FILES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer():
    assert {_unit(_module(p)) for p in FILES} <= set(LAYER), {_unit(_module(p)) for p in FILES} - set(LAYER)


def test_no_module_imports_upwards():
    """Every import, module-level or inside a function, goes to the module's own layer or below."""
    wrong = [f"{p.relative_to(ROOT.parent)}:{line} imports {m}" for p in FILES for m, _, line in _imports(p)
             if LAYER[_unit(m)] > LAYER[_unit(_module(p))]]
    assert not wrong, "\n".join(wrong)


def test_no_private_name_is_imported_across_modules():
    wrong = [f"{p.relative_to(ROOT.parent)}:{line} imports {n} from {m}" for p in FILES for m, n, line in _imports(p)
             if n is not None and n.startswith("_") and not n.startswith("__") and m != _module(p)]
    assert not wrong, "\n".join(wrong)


def test_the_package_imports_no_cycle():
    """No cycle among modules (a package's ``__init__`` re-exporting its modules is not one: the
    package is the modules' parent, whose import runs first)."""
    graph = {}
    for p in FILES:
        me = _module(p)
        graph[me] = {m for m, _, _ in _imports(p) if m != me and not me.startswith(m + ".") and not m.startswith(me + ".")}
    state = {}

    def visit(m, path):
        if state.get(m) == "done" or m not in graph:
            return
        assert state.get(m) != "open", " -> ".join(path + [m])
        state[m] = "open"
        for d in sorted(graph[m]):
            visit(d, path + [m])
        state[m] = "done"

    for m in sorted(graph):
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


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_plan_row_is_a_named_record_or_a_number(name):
    """A plan's rows are typed: named records (of numbers, records and tuples of them), numbers or None;
    no positional tuple layout, also in the plans a wrapper runs."""
    def typed(v, top=False):
        if isinstance(v, tuple) and hasattr(v, "_fields"):
            return all(typed(w) for w in v)
        if isinstance(v, (tuple, list)):
            return not top and all(typed(w) for w in v)
        return v is None or isinstance(v, (bool, int, float))

    def check(plan):
        assert all(typed(row, top=True) for row in plan.coef), (name, plan.coef[:2])
        for inner in plan.inner:
            check(inner)
    check(SAMPLERS[name]().prepare(schedules.VPLinear(), grids.karras_grid(6, schedules.VPLinear())))


def test_a_wrapper_answers_with_its_wrapped_samplers_capabilities():
    from sdeflow.guidance import CFGPlusPlus
    from sdeflow.samplers import DDIM, DPMSolverPP, Heun, PredictorCorrector, UniPC

    for inner in (DDIM(), DPMSolverPP(order=2), Heun()):
        for wrapper in (CFGPlusPlus(inner), PredictorCorrector(inner, n_steps=0)):
            for cap in ("order", "adaptive", "has_history", "evaluates_first", "carries_evaluation", "needs_flow_map"):
                assert getattr(wrapper, cap) == getattr(inner, cap), (wrapper, cap)
    assert PredictorCorrector(DDIM(), n_steps=2).nfe_per_step == 3 and PredictorCorrector(DDIM()).couples_batch
    with pytest.raises(ValueError, match="carries an evaluation"):
        CFGPlusPlus(UniPC())


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
    import sdeflow.objectives.densities as densities
    import sdeflow.objectives.losses as losses

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

    abstract = {"Sampler", "Multistep", "SingleStep", "Reversible", "TwoStep", "FittedSampler", "Recurrent"}
    named = {type(make()) for make in ALL_SAMPLERS.values()}
    named |= {type(s.predictor) for s in (m() for m in ALL_SAMPLERS.values()) if hasattr(s, "predictor")}
    for name in samplers.__all__:
        obj = getattr(samplers, name)
        if isinstance(obj, type) and issubclass(obj, samplers.Sampler) and name not in abstract:
            assert obj in named, f"{name} has no name in SAMPLERS"
    import importlib
    import inspect
    import pkgutil

    public = []  # every posterior-sampling loop (denoiser, operator, y, ...) and transform defined in sdeflow.inverse
    for info in pkgutil.iter_modules(inverse.__path__):
        if info.name == "methods":  # the dispatch itself (solve, check_problem)
            continue
        module = importlib.import_module(f"sdeflow.inverse.{info.name}")
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if isinstance(obj, type) and issubclass(obj, inverse.PosteriorDenoiser) and obj is not inverse.PosteriorDenoiser:
                public.append(obj)
            elif inspect.isfunction(obj) and list(inspect.signature(obj).parameters)[:3] == ["denoiser", "operator", "y"]:
                public.append(obj)
    wrapped = [inverse.METHODS[m].wraps for m in inverse.METHODS]
    assert len(public) >= 11 and sorted(map(id, wrapped)) == sorted(map(id, public)), \
        ([getattr(w, "__name__", w) for w in wrapped], [p.__name__ for p in public])
    built = {type(make((1, 8, 8), 0)) for make in inverse.OPERATORS.values()}
    for cls in (inverse.Mask, inverse.Downsample, inverse.Blur, inverse.Identity, inverse.RandomProjection):
        assert cls in built, f"{cls.__name__} has no name in OPERATORS"

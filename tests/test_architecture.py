"""The layers of ARCHITECTURE.md, checked on every import statement of the library (function-local
ones included): hydra_core uses no kfp, components or pipelines, and each layer imports only the
layers below it."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "hydra_core"

# bottom first; a module may import its own package and anything in a lower layer
LAYERS = (
    ("launch",),  # infrastructure: how many processes the launcher started, which config's checks ask about
    ("distributed",),  # infrastructure: the data-parallel processes
    ("config", "runtime", "memory", "plots", "checkpoint", "tracking"),  # infrastructure
    ("checkpoint_store",),  # infrastructure: where checkpoints live, over the checkpoint format
    ("data",),
    ("models",),
    ("eval",),
    ("sft", "ppo"),
    ("registry", "stage_run"),
    ("stages", "selection"),
    ("cli",),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def unit(module: str) -> str:
    """hydra_core.tracking.runs -> tracking; hydra_core.config -> config."""
    return module.split(".")[1]


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


MODULES = sorted(LIBRARY.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hydra_core_uses_no_kfp_components_or_pipelines(path):
    bad = [(line, name) for line, name in imports(path) if name.split(".")[0] in ("kfp", "components", "pipelines")]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", [p for p in MODULES if p.name != "__init__.py" or p.parent != LIBRARY],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_each_layer_imports_only_the_layers_below_it(path):
    own = path.relative_to(LIBRARY).parts[0].removesuffix(".py")
    assert own in LAYER, f"{own}: put it in a layer of this test and of ARCHITECTURE.md"
    upward = [(line, name) for line, name in imports(path)
              if name.startswith("hydra_core.") and unit(name) != own and unit(name) in LAYER
              and LAYER[unit(name)] >= LAYER[own]]
    assert not upward, f"{path.relative_to(ROOT)} (layer {LAYER[own]}) imports upward or sideways: {upward}"


def test_the_tracking_infrastructure_imports_nothing_else_of_hydra_core():
    for path in (LIBRARY / "tracking").rglob("*.py"):
        others = [name for _, name in imports(path) if name.startswith("hydra_core.") and unit(name) != "tracking"]
        assert not others, f"{path.relative_to(ROOT)} imports {others}"


def test_the_whole_library_and_its_cli_load_without_kfp():
    code = ("import importlib, pkgutil, sys, hydra_core\n"
            "for m in pkgutil.walk_packages(hydra_core.__path__, 'hydra_core.'): importlib.import_module(m.name)\n"
            "from hydra_core import cli\n"
            "cli.build_parser({c.name: c for c in cli.COMMANDS})\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('kfp', 'pipelines', 'components')], "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('kfp', 'pipelines', 'components'))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_the_steps_that_train_nothing_load_neither_torch_nor_transformers():
    """Checking the settings, opening and closing the pipeline's run, registering and comparing read records and
    write them: importing torch and transformers (8-10 s a process here) would be most of each step's time."""
    code = ("import sys\n"
            "import components.check_settings.component, components.open_pipeline_run.component\n"
            "import components.close_pipeline_run.component, components.register_model.component\n"
            "import components.compare_variants.component\n"
            "import hydra_core.config.parameters, hydra_core.selection, hydra_core.tracking.runs\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_importing_the_pipeline_and_its_commands_builds_no_pipeline_and_loads_no_kubeflow_sdk():
    """A pipeline built under an import costs 15-20 s (kfp's task settings call inspect.stack(), which scans
    every loaded module for each import frame): `compile`, `run` and `submit` build it when called. Defining
    the components loads no Kubeflow SDK: only a multi-node step does (components.trainjob)."""
    code = ("import sys\n"
            "from kfp.dsl import pipeline_task\n"
            "calls = []\n"
            "made = pipeline_task.PipelineTask.__init__\n"
            "pipeline_task.PipelineTask.__init__ = lambda self, *a, **k: calls.append(1) or made(self, *a, **k)\n"
            "import pipelines.commands, pipelines.local_run, pipelines.submit, pipelines.arguments\n"
            "assert not calls, f'{len(calls)} tasks made at import'\n"
            "assert 'kubeflow' not in sys.modules and 'components.trainjob' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_the_pipeline_commands_join_the_one_registry():
    from hydra_core import cli

    names = list(cli.commands())
    assert {"prepare", "sft", "ppo", "eval", "sync-tracking", "compile", "submit", "run"} <= set(names)
    assert len(names) == len(set(names))


def _module_of(name: str, modules: set[str]) -> str | None:
    """The project module an imported name belongs to (`hydra_core.config.fields.build` -> its module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_no_module_imports_one_that_imports_it_back():
    """No import circle anywhere in the library, the components or the pipelines (function-local imports
    included): a circle means two modules are one concept split in two, or one of them is in the wrong layer."""
    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for package in ("hydra_core", "components", "pipelines") for p in (ROOT / package).rglob("*.py")}
    graph = {module: {target for _, name in imports(path) if (target := _module_of(name, set(paths)))
                      and target != module and not paths[target].name == "__init__.py"}
             for module, path in paths.items()}
    circles, done = [], set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            circles.append(trail[trail.index(module):] + [module])
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, trail + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)

"""The layer order of the README's "Architecture" section, held against every module's imports.

Each module of ``wdm``, ``baselines`` and ``eval`` belongs to one layer (longest matching prefix
in :data:`LAYERS`) and may import only the layers :data:`MAY_IMPORT` lists for it. The imports
are read with ``ast`` (every ``import`` / ``from ... import``, inside functions too), so a lazy
import cannot hide an arrow against the order. A new module must be placed in a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("wdm", "baselines", "eval")

#: module prefix -> layer (the longest prefix wins).
LAYERS: dict[str, str] = {
    # core: files, config, errors, measurement, checkpoints, run records
    "wdm.io": "core", "wdm.config": "core", "wdm.oom": "core", "wdm.profiling": "core",
    "wdm.checkpoints": "core", "wdm.records": "core", "wdm.locks": "core",
    # building blocks: pure transforms, networks, processes, metrics, data preparation
    "wdm.wavelets": "blocks", "wdm.haar_cpu": "blocks", "wdm.codec": "blocks", "wdm.networks": "blocks",
    "wdm.wavunet": "blocks",
    "wdm.diffusion": "blocks", "wdm.samplers": "blocks", "wdm.data": "blocks",
    "eval.features": "blocks", "eval.medicalnet_weights": "blocks", "eval.metrics": "blocks",
    "eval.msssim": "blocks", "eval.fidelity": "blocks",
    "eval.memorisation": "blocks", "eval.significance": "blocks",
    # methods: the model contract and every model
    "wdm.model": "methods", "baselines": "methods",
    # harness: runs models (training, sampling, scale-out, probes, weight conversion)
    "wdm.train": "harness", "wdm.loop": "harness", "wdm.sample": "harness",
    "wdm.distributed": "harness", "wdm.probe": "harness", "wdm.probe_counts": "harness",
    "wdm.activation_memory": "harness",
    "wdm.convert": "harness", "wdm.runs": "harness", "wdm.budget": "harness", "wdm.extractor": "harness",
    "wdm.ema": "harness",
    # evaluation: reads volumes and records, never runs a model
    "eval": "evaluation",
    # the command line
    "wdm.cli": "cli", "wdm": "cli",
}

MAY_IMPORT: dict[str, set[str]] = {
    "core": {"core"},
    "blocks": {"core", "blocks"},
    "methods": {"core", "blocks", "methods"},
    "harness": {"core", "blocks", "methods", "harness"},
    "evaluation": {"core", "blocks", "evaluation"},
    "cli": {"core", "blocks", "methods", "harness", "evaluation", "cli"},
}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name of ours (None for third-party modules)."""
    if module.split(".")[0] not in PACKAGES:
        return None
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    return LAYERS[best] if best else "unplaced"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # `from pkg import name`: name may be a submodule (a file of ours) or an attribute
            out += [(node.lineno, f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base)
                    for a in node.names]
    return out


def _is_module(dotted: str) -> bool:
    path = REPO.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_every_module_has_a_layer():
    unplaced = [module_name(p) for p in source_files() if layer_of(module_name(p)) == "unplaced"]
    assert not unplaced, f"place these modules in tests/test_architecture.py LAYERS: {unplaced}"


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_layer_order(path):
    mine = layer_of(module_name(path))
    wrong = [f"{path.relative_to(REPO)}:{line} ({mine}) imports {mod} ({layer_of(mod)})"
             for line, mod in imported_modules(path)
             if layer_of(mod) is not None and layer_of(mod) not in MAY_IMPORT[mine]]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_an_arrow_against_the_order(tmp_path):
    """The walk itself: a lazy import of the harness inside an evaluation function is caught."""
    fake = REPO / "eval" / "_layer_probe_tmp.py"
    fake.write_text("def f():\n    from wdm.train import train\n    from . import metrics\n")
    try:
        mods = dict((m, line) for line, m in imported_modules(fake))
        assert "wdm.train.train" in mods or "wdm.train" in mods
        assert "eval.metrics" in mods
        assert layer_of("wdm.train") not in MAY_IMPORT[layer_of(module_name(fake))]
    finally:
        fake.unlink()


def test_the_harness_never_probes_a_model_with_hasattr():
    """Behaviour comes from the contract (wdm.model.BenchmarkModel), not from hasattr/getattr."""
    found = []
    for path in source_files():
        if layer_of(module_name(path)) != "harness":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("hasattr", "getattr") and node.args
                    and isinstance(node.args[0], ast.Name) and node.args[0].id == "model"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, found

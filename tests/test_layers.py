"""The layers are real: core < ml < pipeline < cli, checked on every import statement (function-level ones too).

- A lower layer never imports a higher one; core imports no torch/transformers/TRL/PEFT/datasets and no
  MLflow/DVC/Prefect/Ray, ml no MLflow/DVC/Prefect.
- Stage modules never import other stage modules (editing one stage's file must not rerun another's stage).
- Stage modules import nothing heavy at top level: render collects their specs on every stage start.
- No module is named after a stdlib module, and nothing in alignloop/ imports flows/ or tasks/.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "alignloop"
LAYERS = {"core": 0, "ml": 1, "pipeline": 2}  # alignloop/<layer>/...; cli.py and __main__.py sit above all
HEAVY = {"torch", "transformers", "trl", "peft", "datasets", "accelerate", "vllm", "safetensors", "tokenizers"}
SERVICES = {"mlflow", "dvc", "prefect", "prefect_ray", "ray"}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "alignloop":
        return None
    if len(parts) == 1 or parts[1] in ("cli", "__main__"):
        return 3
    return LAYERS.get(parts[1], 3)


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, at top level) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from alignloop.core import files` imports alignloop.core.files
            subs = [f"{node.module}.{a.name}" for a in node.names] if node.module.count(".") < 2 else [node.module]
            out += [(node.lineno, m, id(node) in top) for m in subs]
    return out


def modules() -> list[tuple[str, Path]]:
    return [(".".join(p.relative_to(ROOT).with_suffix("").parts), p) for p in sorted(PKG.rglob("*.py"))]


def violations() -> list[str]:
    out = []
    for mod, path in modules():
        own = layer_of(mod)
        rel = path.relative_to(ROOT)
        is_stage = mod.startswith("alignloop.pipeline.stages.")
        for line, imp, top in imports(path):
            root = imp.split(".")[0]
            if imp.startswith("alignloop") and (layer_of(imp) or 0) > own:
                out.append(f"{rel}:{line}: layer {own} imports {imp} (layer {layer_of(imp)})")
            if own == 0 and root in HEAVY | SERVICES:
                out.append(f"{rel}:{line}: core imports {imp}")
            if own == 1 and root in SERVICES:
                out.append(f"{rel}:{line}: ml imports {imp}")
            if root in ("flows", "tasks"):
                out.append(f"{rel}:{line}: the library imports the orchestration layer ({imp})")
            if is_stage and imp.startswith("alignloop.pipeline.stages."):
                out.append(f"{rel}:{line}: a stage imports another stage ({imp})")
            if is_stage and top and (root in HEAVY or (imp.startswith("alignloop.ml") and imp != "alignloop.ml")):
                out.append(f"{rel}:{line}: a stage imports {imp} at top level (import it inside the function)")
    return out


def test_no_layer_imports_upwards_and_core_stays_pure():
    found = violations()
    assert not found, "\n".join(found)


@pytest.mark.parametrize("code, expected", [
    ("import torch\n", "core imports torch"),
    ("from alignloop.pipeline import layout\n", "layer 0 imports alignloop.pipeline.layout"),
    ("def f():\n    import mlflow\n", "core imports mlflow"),
])
def test_the_checker_catches_an_upward_or_heavy_import(tmp_path, monkeypatch, code, expected):
    fake_root = tmp_path
    (fake_root / "alignloop" / "core").mkdir(parents=True)
    (fake_root / "alignloop" / "core" / "bad.py").write_text(code)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake_root / "alignloop")
    assert any(expected in v for v in violations())


def test_no_module_shadows_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    clashes = [str(p.relative_to(ROOT)) for p in PKG.rglob("*.py") if p.stem in stdlib]
    assert not clashes, clashes


def test_collecting_the_stage_specs_imports_no_model_code():
    """Every stage start renders the DAG from the specs: that must not import torch or transformers."""
    code = ("import sys; from alignloop.pipeline.specs import all_specs; all_specs(); "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'mlflow', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_installed_top_level_packages_are_alignloop_only():
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert include == ["alignloop*"]  # flows/ and tasks/ run from the repo; generic names stay out of site-packages


def test_every_spec_names_the_module_that_declares_it():
    """A spec's module is its entry point (`python -m ...`) and its first code dep: never `__main__`."""
    import importlib

    from alignloop.pipeline.specs import all_specs

    for spec in all_specs():
        assert spec in importlib.import_module(spec.module).SPECS, spec.name

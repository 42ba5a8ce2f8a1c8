"""Docs tell the truth: every public name has a docstring, the generated API reference is
current, and the code samples of the README and the serving guide run."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from ralf import Ralf
from tools import apidoc

ROOT = Path(__file__).resolve().parents[1]


def _public_modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "ralf").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if not any(p.startswith("_") for p in parts):
            names.append(".".join(parts))
    return names


def _undocumented(module_name: str) -> list[str]:
    """Public classes and functions a module defines, and their public methods and
    properties, without a docstring (an override of a documented method inherits its)."""
    module = importlib.import_module(module_name)
    missing = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not inspect.getdoc(obj):
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(obj):
            for member, value in vars(obj).items():
                if member.startswith("_"):
                    continue
                if (isinstance(value, (property, staticmethod, classmethod))
                        or inspect.isfunction(value)) and not inspect.getdoc(
                            getattr(obj, member)):
                    missing.append(f"{module_name}.{name}.{member}")
    return missing


@pytest.mark.parametrize("module_name", _public_modules())
def test_every_public_name_has_a_docstring(module_name):
    assert _undocumented(module_name) == []


def test_the_api_reference_is_generated_from_the_current_docstrings():
    assert (ROOT / "docs" / "reference.md").read_text() == apidoc.render(), (
        "docs/reference.md is not current: python -m tools.apidoc")


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_serving_guides_pipeline_file_runs(tmp_path):
    (block,) = [b for b in _python_blocks(ROOT / "docs" / "serving.md")
                if b.startswith("# pipeline.py")]
    namespace: dict = {}
    exec(compile(block, "docs/serving.md", "exec"), namespace)  # noqa: S102 - our own doc
    with Ralf() as server:
        namespace["build"](server)
        server.run()
        assert len(server.bulk_query("average")) == 7


def test_the_readmes_pipeline_in_20_lines_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it writes features.duckdb where it runs
    block = next(b for b in _python_blocks(ROOT / "README.md") if "with Ralf(" in b)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
    assert (tmp_path / "features.duckdb").exists()

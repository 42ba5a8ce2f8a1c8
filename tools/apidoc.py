"""The API reference (docs/reference.md), generated from the docstrings so it cannot drift.

    python -m tools.apidoc            # write docs/reference.md
    python -m tools.apidoc --check    # exit 1 if docs/reference.md is not what it would write

It documents what users import — the names ``ralf`` exports, the built-in policies, the
test helpers — and the HTTP routes, from the app's own OpenAPI description.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
# (module, what it is for users); each module's __all__ (or public names) is documented
MODULES = [
    ("ralf", "The top-level API: a pipeline, its tables, its clients, its errors."),
    ("ralf.policies", "Built-in load-shedding and prioritization policies."),
    ("ralf.testing", "Deterministic helpers for testing pipelines."),
    ("ralf.faults", "Fault injection for crash and recovery tests."),
]


def public_names(module: Any) -> list[str]:
    """A module's documented names: its ``__all__``, else what it defines without a
    leading underscore."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__
                 and (inspect.isclass(v) or inspect.isfunction(v))]
    return sorted(names, key=lambda n: (not inspect.isclass(getattr(module, n)), n))


def members(cls: type) -> list[tuple[str, Any]]:
    """A class's public methods and properties, in the order it defines them (its own, not
    the base classes')."""
    found = []
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(value, (property, staticmethod, classmethod)) or inspect.isfunction(value):
            found.append((name, getattr(cls, name)))
    return found


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj)).replace("'", "")
    except (TypeError, ValueError):
        return "(...)"


def _doc(obj: Any, first_paragraph: bool = False) -> str:
    """The docstring with its lines joined into paragraphs (only the first, for a bullet)."""
    paragraphs = [" ".join(p.split()) for p in (inspect.getdoc(obj) or "").split("\n\n")]
    return paragraphs[0] if first_paragraph else "\n\n".join(paragraphs)


def render() -> str:
    """The whole reference page."""
    out = ["# API reference", "",
           "Generated from the docstrings by `python -m tools.apidoc` (a test checks it is "
           "current). Guides: `docs/api.md` (the tour), `docs/serving.md` (HTTP and CLI).", ""]
    for module_name, about in MODULES:
        module = importlib.import_module(module_name)
        out += [f"## `{module_name}`", "", about, ""]
        for name in public_names(module):
            obj = getattr(module, name)
            if inspect.isclass(obj):
                out += [f"### class `{name}{_signature(obj)}`", "", _doc(obj), ""]
                for member, value in members(obj):
                    if member == "__init__":
                        continue
                    label = member if isinstance(vars(obj)[member], property) else (
                        f"{member}{_signature(value)}")
                    out += [f"* `{label}` — {_doc(value, True) or '(see the class)'}"]
                out.append("")
            elif callable(obj):
                out += [f"### `{name}{_signature(obj)}`", "", _doc(obj), ""]
            else:
                out += [f"### `{name}`", "", f"`{obj!r}`", ""]
    out += _routes()
    return "\n".join(line.rstrip() for line in out).rstrip() + "\n"


def _routes() -> list[str]:
    from ralf.http.app import create_app
    from ralf.server import Ralf

    with Ralf() as server:
        spec = create_app(server).openapi()
    out = ["## HTTP routes", "", "Served by `Ralf.serve` and `ralf serve` (OpenAPI at "
           "`/openapi.json`, Swagger UI at `/docs`).", "", "| route | what |", "|---|---|"]
    for path, operations in sorted(spec["paths"].items()):
        for method, operation in operations.items():
            out.append(f"| `{method.upper()} {path}` | {operation.get('summary', '')} |")
    return [*out, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.apidoc", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="fail if docs/reference.md is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not REFERENCE.exists() or REFERENCE.read_text() != text:
            print("docs/reference.md is not current: python -m tools.apidoc", file=sys.stderr)
            return 1
        return 0
    REFERENCE.write_text(text)
    print(f"wrote {REFERENCE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Mutation check: plant small faults in ralf's engine and IVM code and see which the tests
catch (docs/testing.md).

    python -m tools.mutate                      # ralf/engine and ralf/ivm, 2 workers
    python -m tools.mutate --paths ralf/ivm/aggregate.py --jobs 1 --limit 50

1. One run of the fast tests under coverage, with each test as a context, maps every
   line to the tests that execute it.
2. Every mutation site of the target files becomes one mutant: a comparison flipped
   (``<`` to ``<=``, ``==`` to ``!=``, ``in`` to ``not in``), an arithmetic or boolean
   operator swapped, ``not`` dropped, a number moved by one, ``True``/``False``
   swapped, a bare call statement deleted, and in SQL text (the IVM plans' strings) an
   operator or function swapped or an argument of a call dropped.
3. Each mutant is written into a private copy of the tree and only the tests covering
   its lines run (DuckDB only, stopping at the first failure). A failing run kills the
   mutant; a passing one lets it survive; a mutant no test executes is "not covered".

It prints one line per mutant and a summary per file, and writes every survivor (file,
line, the original and the mutated source line) to ``--report`` (JSON). Slow by nature
(minutes per hundred mutants): not part of CI.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The tests that run in seconds and exercise the engine in process (the crash, shard,
# Ray and end-to-end suites run subprocesses that coverage does not follow).
FAST_TESTS = ["tests/engine", "tests/ivm", "tests/policies", "tests/storage",
              "tests/test_server.py", "tests/test_table.py", "tests/test_history.py",
              "tests/test_hostile.py", "tests/test_schema.py", "tests/test_client.py",
              "tests/test_testing.py", "tests/test_schema_outputs.py"]
SLOW_TESTS = ["tests/engine/test_crashpoints.py", "tests/engine/test_durability.py",
              "tests/engine/test_routing.py", "tests/engine/test_ray_executor.py",
              "tests/engine/test_recovery.py"]

_COMPARE_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
                  ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
                  ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
                ast.FloorDiv: ast.Div, ast.Mod: ast.Mult, ast.Pow: ast.Mult,
                ast.BitOr: ast.BitAnd, ast.BitAnd: ast.BitOr}
_BOOL_SWAPS = {ast.And: ast.Or, ast.Or: ast.And}
# SQL inside string literals: (pattern, replacement) pairs, each match one mutant
_SQL_SWAPS = [(r"\bleast\b", "greatest"), (r"\bgreatest\b", "least"), (r"\bmin\b", "max"),
              (r"\bmax\b", "min"), (r" \+ ", " - "), (r" - ", " + "), (r" \* ", " / "),
              (r" / ", " * "), (r" > ", " >= "), (r" >= ", " > "), (r" < ", " <= "),
              (r" <= ", " < "), (r" = ", " <> "), (r"\bAND\b", "OR"), (r"\bOR\b", "AND"),
              (r"\bLEFT JOIN\b", "JOIN"), (r"\bDESC\b", "ASC"), (r"\bASC\b", "DESC"),
              (r"\bcount\(", "sum("), (r"\bavg\(", "sum("), (r"\bIS NULL\b", "IS NOT NULL"),
              (r"\bIS NOT NULL\b", "IS NULL")]


@dataclass
class Mutant:
    file: str  # relative to the repository
    line: int
    end_line: int
    kind: str
    original: str  # the source line(s) before
    mutated: str  # after (as ast.unparse writes the mutated statement)
    index: int = 0  # the n-th site this enumeration found in the file
    status: str = ""  # killed / survived / not covered / timeout
    seconds: float = 0.0


# ---- finding mutation sites -------------------------------------------------------------
def _sites(tree: ast.AST) -> Iterator[tuple[ast.AST, str, object]]:
    """(node, kind, how) for each mutation; ``how`` is what _apply needs."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _COMPARE_SWAPS:
                    yield node, f"compare {type(op).__name__}", i
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BINOP_SWAPS:
            yield node, f"arithmetic {type(node.op).__name__}", None
        elif isinstance(node, ast.BoolOp):
            yield node, f"boolean {type(node.op).__name__}", None
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, "drop not", None
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            yield node, "flip bool", None
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            yield node, "number + 1", None
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            yield node, "delete call", None
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for n, (pattern, _) in enumerate(_SQL_SWAPS):
                for m in re.finditer(pattern, node.value):
                    yield node, f"sql {pattern}", (n, m.start())
        elif isinstance(node, ast.JoinedStr):
            for i, part in enumerate(node.values):
                if (isinstance(part, ast.FormattedValue) and i > 0
                        and isinstance(node.values[i - 1], ast.Constant)
                        and node.values[i - 1].value.endswith(", ")):
                    yield node, "sql drop argument", i


def _apply(node: ast.AST, kind: str, how: object) -> None:
    """Mutate ``node`` in place."""
    if kind.startswith("compare"):
        node.ops[how] = _COMPARE_SWAPS[type(node.ops[how])]()
    elif kind.startswith("arithmetic"):
        node.op = _BINOP_SWAPS[type(node.op)]()
    elif kind.startswith("boolean"):
        node.op = _BOOL_SWAPS[type(node.op)]()
    elif kind == "flip bool":
        node.value = not node.value
    elif kind == "number + 1":
        node.value += 1
    elif kind.startswith("sql drop"):
        before = node.values[how - 1]
        before.value = before.value[:-2]
        del node.values[how]
    elif kind.startswith("sql"):
        n, start = how
        pattern, replacement = _SQL_SWAPS[n]
        text = node.value
        match = re.compile(pattern).match(text, start)
        node.value = text[:start] + re.sub(pattern, replacement, match.group(0)) + text[
            match.end():]


class _Replace(ast.NodeTransformer):
    """Replaces one node: a deleted call statement by ``pass``, ``not x`` by ``x``."""

    def __init__(self, target: ast.AST) -> None:
        self.target = target

    def visit(self, node: ast.AST) -> ast.AST:
        if node is self.target:
            return ast.Pass() if isinstance(node, ast.Expr) else node.operand
        return self.generic_visit(node)


def mutants_of(path: Path) -> list[tuple[Mutant, str]]:
    """Every mutant of one file, with the mutated module's source."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef,
                                    ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr)
                  and isinstance(n.body[0].value, ast.Constant)}
    skipped = docstrings | _not_behaviour(tree)
    unmutated = ast.unparse(tree)
    position = {id(n): i for i, n in enumerate(ast.walk(tree))}
    found = []
    for index, (node, kind, how) in enumerate(list(_sites(tree))):
        if id(node) in skipped:
            continue
        copy_tree = copy.deepcopy(tree)
        twin = list(ast.walk(copy_tree))[position[id(node)]]
        if kind in ("delete call", "drop not"):
            after = "pass" if kind == "delete call" else ast.unparse(twin.operand)
            copy_tree = _Replace(twin).visit(copy_tree)
        else:
            _apply(twin, kind, how)
            after = ast.unparse(twin)
        try:
            mutated_source = ast.unparse(copy_tree)
            compile(mutated_source, str(path), "exec")
        except (SyntaxError, ValueError):
            continue
        if mutated_source == unmutated:  # the same program: nothing to catch
            continue
        start, end = node.lineno, getattr(node, "end_lineno", node.lineno) or node.lineno
        found.append((Mutant(str(path.relative_to(ROOT)), start, end, kind,
                             "\n".join(lines[start - 1:end]).strip(), after, index),
                      mutated_source))
    return found


def _not_behaviour(tree: ast.AST) -> set[int]:
    """Ids of the nodes in type annotations, logging calls and raised errors' messages:
    mutating them changes no behaviour a test should pin down."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.arg, ast.AnnAssign)) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            roots.append(node.returns)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                node.func.attr in ("debug", "info", "warning", "error", "exception")):
            roots.append(node)
        elif isinstance(node, ast.Raise) and node.exc is not None:
            roots.append(node.exc)
        elif (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
              and isinstance(node.value.func, ast.Name) and node.value.func.id == "crashpoint"):
            roots.append(node)  # fault injection: the crash tests run it in subprocesses
    return {id(n) for root in roots for n in ast.walk(root)}


# ---- which tests cover which lines ------------------------------------------------------
def coverage_map(targets: list[Path], work: Path) -> dict[str, dict[int, set[str]]]:
    """file -> line -> pytest node ids of the tests that execute it."""
    rc = work / "coveragerc"
    rc.write_text("[run]\ndynamic_context = test_function\nsource = ralf\ninclude =\n"
                  + "".join(f"    {ROOT / t}\n" for t in targets)
                  + f"data_file = {work}/.coverage\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RALF_REQUIRE_SERVICES", None)
    print("mutate: mapping lines to tests (one coverage run of the fast tests) ...",
          flush=True)
    subprocess.run([sys.executable, "-m", "coverage", "run", f"--rcfile={rc}", "-m", "pytest",
                    "-q", "-x", "-p", "no:cacheprovider", "-k", "not postgres", *FAST_TESTS,
                    *[f"--deselect={t}" for t in SLOW_TESTS]],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    from coverage import CoverageData

    data = CoverageData(basename=str(work / ".coverage"))
    data.read()
    covered: dict[str, dict[int, set[str]]] = {}
    for measured in data.measured_files():
        relative = str(Path(measured).resolve().relative_to(ROOT))
        by_line: dict[int, set[str]] = defaultdict(set)
        for line, contexts in data.contexts_by_lineno(measured).items():
            for context in contexts:
                if context:
                    by_line[line].update(_node_ids(context))
        covered[relative] = by_line
    return covered


def _node_ids(context: str) -> list[str]:
    """'tests.engine.test_refresh.test_x' (coverage's context) -> its pytest node id.
    Inside a hypothesis test the innermost function named test_* is hypothesis's own
    (ConjectureRunner.test_function): such lines map to every hypothesis test."""
    parts = context.split(".")
    for cut in range(len(parts), 0, -1):
        module = ROOT.joinpath(*parts[:cut]).with_suffix(".py")
        if module.is_file() and module.is_relative_to(ROOT / "tests"):
            return [f"{module.relative_to(ROOT)}::{'::'.join(parts[cut:])}"]
    return _hypothesis_tests()


def _hypothesis_tests() -> list[str]:
    """Node ids of the fast tests that hypothesis drives (``@given``)."""
    found = []
    for folder in FAST_TESTS:
        for path in sorted((ROOT / folder).rglob("test_*.py")) if (ROOT / folder).is_dir() \
                else [ROOT / folder]:
            tree = ast.parse(path.read_text())
            found += [f"{path.relative_to(ROOT)}::{f.name}" for f in tree.body
                      if isinstance(f, ast.FunctionDef) and any(
                          isinstance(d, ast.Call) and getattr(d.func, "id", "") == "given"
                          for d in f.decorator_list)]
    return found


# ---- running mutants --------------------------------------------------------------------
class Workers:
    """Private copies of the tree, one per worker."""

    def __init__(self, jobs: int, work: Path) -> None:
        self.free: list[Path] = []
        self.lock = threading.Lock()
        for i in range(jobs):
            tree = work / f"w{i}"
            for part in ("ralf", "tests", "migrations", "pyproject.toml"):
                source = ROOT / part
                if source.is_dir():
                    shutil.copytree(source, tree / part,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(source, tree / part)
            self.free.append(tree)

    def take(self) -> Path:
        with self.lock:
            return self.free.pop()

    def give(self, tree: Path) -> None:
        with self.lock:
            self.free.append(tree)


def run_mutant(workers: Workers, mutant: Mutant, source: str, tests: list[str],
               timeout: float) -> Mutant:
    if not tests:
        mutant.status = "not covered"
        return mutant
    tree = workers.take()
    target = tree / mutant.file
    original = target.read_text()
    target.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("RALF_REQUIRE_SERVICES", None)
    start = time.monotonic()
    # the mutated module's own test file first: most mutants die there, at once (-x)
    module = Path(mutant.file).relative_to("ralf")
    mirror = str(Path("tests") / module.parent / f"test_{module.name}")
    ordered = sorted(tests, key=lambda t: (not t.startswith(mirror), t))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p",
                               "no:cacheprovider", "-k", "not postgres", *ordered],
                              cwd=tree, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout)
        # pytest: 0 all passed, 1 some failed; anything else is a broken run, not a kill
        mutant.status = {0: "survived", 1: "killed"}.get(done.returncode,
                                                          f"error {done.returncode}")
    except subprocess.TimeoutExpired:
        mutant.status = "timeout"  # an endless loop: caught, in effect
    finally:
        target.write_text(original)
        workers.give(tree)
    mutant.seconds = time.monotonic() - start
    return mutant


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutate", description=__doc__)
    parser.add_argument("--paths", nargs="+", default=["ralf/engine", "ralf/ivm"],
                        help="files or folders to mutate (default: ralf/engine ralf/ivm)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once")
    parser.add_argument("--limit", type=int, default=None, help="at most this many mutants")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutant")
    parser.add_argument("--report", default="mutation-report.json",
                        help="where to write the results (JSON)")
    args = parser.parse_args(argv)
    files = sorted({p for t in args.paths
                    for p in ((ROOT / t).rglob("*.py") if (ROOT / t).is_dir() else [ROOT / t])
                    if p.name != "__init__.py"})
    work = Path(tempfile.mkdtemp(prefix="ralf-mutation-"))
    try:
        covered = coverage_map([f.relative_to(ROOT) for f in files], work)
        plan = [m for f in files for m in mutants_of(f)][:args.limit]
        print(f"mutate: {len(plan)} mutants of {len(files)} files, {args.jobs} at a time",
              flush=True)
        workers = Workers(args.jobs, work)
        results: list[Mutant] = []
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = []
            for mutant, source in plan:
                lines = covered.get(mutant.file, {})
                tests = set().union(*(lines.get(n, set())
                                      for n in range(mutant.line, mutant.end_line + 1)))
                futures.append(pool.submit(run_mutant, workers, mutant, source, sorted(tests),
                                           args.timeout))
            for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
                m = future.result()
                results.append(m)
                print(f"[{i}/{len(plan)}] {m.status:<11} {m.file}:{m.line} {m.kind}: "
                      f"{m.original[:60]!r} -> {m.mutated[:60]!r} ({m.seconds:.0f} s)",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _summary(results)
    Path(args.report).write_text(json.dumps(
        [asdict(m) for m in sorted(results, key=lambda m: (m.file, m.line))], indent=1))
    print(f"mutate: report in {args.report}")
    return 0


def _summary(results: list[Mutant]) -> None:
    by_file: dict[str, Counter] = defaultdict(Counter)
    for m in results:
        by_file[m.file][m.status] += 1
    statuses = ["killed", "timeout", "survived", "not covered"]
    statuses += sorted({m.status for m in results} - set(statuses))
    print(f"\n{'file':<32}" + "".join(f"{s:>13}" for s in statuses) + f"{'survival':>10}")
    total: Counter = Counter()
    for file, counts in sorted(by_file.items()):
        total.update(counts)
        print(f"{file:<32}" + "".join(f"{counts[s]:>13}" for s in statuses)
              + f"{_rate(counts):>10}")
    print(f"{'all':<32}" + "".join(f"{total[s]:>13}" for s in statuses) + f"{_rate(total):>10}")


def _rate(counts: Counter) -> str:
    """Survivors among the mutants some test runs (not-covered ones count as survivors)."""
    alive = counts["survived"] + counts["not covered"]
    total = sum(counts.values())
    return f"{100 * alive / total:.1f}%" if total else "-"


if __name__ == "__main__":
    sys.exit(main())

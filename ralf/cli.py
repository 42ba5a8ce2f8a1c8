"""The ``ralf`` command: serve a pipeline file, and query or inspect a running server.

A pipeline file is a Python file that defines ``build(server)``: it creates the sources
and tables on the ``Ralf`` it is given (see docs/serving.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ralf.client import DEFAULT_URL, RalfClient
from ralf.errors import RalfError
from ralf.storage import is_postgres_url

log = logging.getLogger("ralf")


def load_pipeline(path: str) -> Any:
    """Import a pipeline file and return its ``build`` function."""
    file = Path(path)
    if not file.is_file():
        raise RalfError(f"no pipeline file {path!r}")
    spec = importlib.util.spec_from_file_location(f"ralf_pipeline_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(file.resolve().parent))
    spec.loader.exec_module(module)
    build = getattr(module, "build", None)
    if not callable(build):
        raise RalfError(f"{path} must define build(server)")
    return build


def serve(args: argparse.Namespace) -> int:
    """Run a pipeline file: build it on a ``Ralf`` opened on ``--db``, process and serve HTTP
    until SIGINT or SIGTERM, printing a progress line every ``--log-every`` seconds."""
    from ralf.server import Ralf

    build = load_pipeline(args.pipeline)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Ralf(args.db, shard=args.shard, num_shards=args.num_shards) as server:
        build(server)
        server.start(interval=args.interval)
        url = server.serve(args.host, args.port, token=args.token)
        print(f"ralf: serving {args.pipeline} on {url} (database: {args.db or 'in memory'})",
              flush=True)
        while not stop.wait(args.log_every):
            print(_progress_line(server.metrics()), flush=True)
        print("ralf: stopping", flush=True)
    return 0


def _progress_line(metrics: dict[str, Any]) -> str:
    tables = metrics["tables"].values()
    ingested = sum(t.get("ingested", 0) for t in tables)
    processed = sum(t.get("processed", 0) for t in tables)
    stale = sum(t.get("stale_keys") or 0 for t in tables)
    return (f"ralf: tick {metrics['ticks']}, {ingested:,} records ingested, "
            f"{processed:,} processed, {stale:,} stale keys")


def _client(args: argparse.Namespace) -> RalfClient:
    return RalfClient(args.url, timeout=args.timeout, token=args.token)


def tables(args: argparse.Namespace) -> int:
    """Print each table's name, kind, whether it is lazy, and its row count."""
    for entry in _client(args).tables():
        lazy = " lazy" if entry.get("lazy") else ""
        print(f"{entry['name']:<30} {entry['kind']:<8}{lazy:<5} {entry['rows']:>12,} rows")
    return 0


def query(args: argparse.Namespace) -> int:
    """Print one row by key, a field per line (``--metadata``: with its staleness)."""
    record = _client(args).point_query(args.table, args.key, with_metadata=args.metadata)
    for name, value in record.to_dict().items():
        print(f"{name}: {value!r}")
    return 0


def forget(args: argparse.Namespace) -> int:
    """Forget a key of a changelog source on the server; print what was removed."""
    removed = _client(args).forget(args.table, args.key)
    for table, rows in sorted(removed.items()):
        print(f"{table:<40} {rows:>10,} removed")
    return 0


def bulk(args: argparse.Namespace) -> int:
    """Print all rows of a table (as CSV with ``--csv``); how long the fetch took goes to
    stderr."""
    start = time.perf_counter()
    print(f"fetching {args.table} ...", file=sys.stderr, flush=True)
    df = _client(args).bulk_query(args.table)
    print(f"fetched {len(df):,} rows in {time.perf_counter() - start:.2f} s",
          file=sys.stderr, flush=True)
    _print_frame(df, args.csv)
    return 0


def sql(args: argparse.Namespace) -> int:
    """Print the result of one read-only SQL query (as CSV with ``--csv``)."""
    _print_frame(_client(args).sql(args.query), args.csv)
    return 0


def _print_frame(df: Any, as_csv: bool) -> None:
    if as_csv:
        df.to_csv(sys.stdout, index=False)
    else:
        print(df.to_string(index=False))


def status(args: argparse.Namespace) -> int:
    """Print the tick count, each table's rows, staleness and counters, then each problem
    keeping the server from serving fresh features."""
    client = _client(args)
    rows = {t["name"]: t["rows"] for t in client.tables()}
    metrics = client.metrics()
    print(f"ticks: {metrics['ticks']:,}")
    header = (f"{'table':<24}{'kind':<9}{'rows':>10}{'stale':>8}{'processed':>11}{'shed':>9}"
              f"{'rejected':>9}{'p50 s':>9}{'p99 s':>9}{'quarant.':>9}")
    print(header)
    for name, m in metrics["tables"].items():
        print(f"{name:<24}{m['kind']:<9}{rows.get(name, 0):>10,}"
              f"{_n(m.get('stale_keys')):>8}{m['processed']:>11,}{m['shed']:>9,}"
              f"{m['rejected']:>9,}{_s(m.get('staleness_p50')):>9}"
              f"{_s(m.get('staleness_p99')):>9}{_n(m.get('quarantined_keys')):>9}")
    problems = client.problems()
    for problem in problems:
        count = f" ({problem['keys']:,})" if "keys" in problem else ""
        print(f"problem: {problem['kind']} {problem['table']!r} {problem['problem']}{count}: "
              f"{problem.get('reason') or '-'}")
    return 0


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def duckdb_shell() -> str:
    """Path of the duckdb shell: the one beside this Python, else on PATH; raises
    RalfError when there is none."""
    beside = Path(sys.executable).parent / "duckdb"
    found = str(beside) if beside.exists() else shutil.which("duckdb")
    if found is None:
        raise RalfError("the duckdb shell is not installed: pip install duckdb-cli")
    return found


def psql() -> str:
    """Path of psql: on PATH, else the newest under /usr/lib/postgresql; raises RalfError
    when there is none."""
    found = shutil.which("psql") or next(
        iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"), reverse=True)), None)
    if found is None:
        raise RalfError("psql is not installed: apt-get install postgresql-client")
    return str(found)


def shell(args: argparse.Namespace) -> int:
    """Open the duckdb shell: on the file itself, or on a snapshot a running server makes
    (deleted when the shell exits); psql on a PostgreSQL database (read-only when it is a
    server's)."""
    env = dict(os.environ)
    client, target = None, args.db
    flags: list[str] = []
    if not args.db:
        client = _client(args)
        target = client.snapshot()
        flags = ["-readonly"]
        env["PGOPTIONS"] = "-c default_transaction_read_only=on"
        print(f"ralf: read-only view of the server's database: {target}", file=sys.stderr)
    if is_postgres_url(target):
        command = [psql(), target, *args.shell_args]
    else:
        command = [duckdb_shell(), *flags, target, *args.shell_args]
    try:
        return subprocess.run(command, env=env).returncode
    finally:
        if client is not None and not is_postgres_url(target):
            client.drop_snapshot(target)


def pipeline_plan(pipeline: str, db: str | None, *, drop_removed: bool = False) -> Any:
    """What applying a pipeline file to ``db`` would change (a :class:`ralf.evolve.Plan`):
    its tables as built on an empty in-memory database, against the ones ``db`` stores."""
    from ralf.evolve import plan
    from ralf.server import Ralf

    build = load_pipeline(pipeline)
    with Ralf() as scratch:
        build(scratch)
        defined = scratch.pipeline.catalog
    stored = {}
    if is_postgres_url(db) or Path(db).exists():  # planning creates no database file
        with Ralf(db) as target:
            stored = target.pipeline.catalog
    # a SQL table's types are the backend's; its query and parents decide them anyway
    return plan(stored, defined, schemas=not is_postgres_url(db), drop_removed=drop_removed)


def plan_pipeline(args: argparse.Namespace) -> int:
    """Print what ``ralf apply`` would change: new, changed, removed tables, the ones a
    change invalidates, and what identifies each operator (``--json``: as JSON)."""
    found = pipeline_plan(args.pipeline, args.db)
    print(json.dumps(found.to_dict(), indent=2) if args.json else found.render())
    return 0


def apply_pipeline(args: argparse.Namespace) -> int:
    """Print the plan, then carry it out: create new tables, rebuild changed ones and the
    tables reading them by replay until a tick finds nothing to do, drop removed tables
    with ``--drop-removed``."""
    from ralf.server import Ralf

    found = pipeline_plan(args.pipeline, args.db, drop_removed=args.drop_removed)
    print(found.render(), flush=True)
    build = load_pipeline(args.pipeline)
    with Ralf(args.db, evolve="rebuild") as server:
        build(server)
        if args.drop_removed:
            for name in server.removed_tables():
                server.drop_table(name)
        ticks = 0
        while server.step():
            ticks += 1
        print(f"ralf: applied ({', '.join(server.rebuilt_tables()) or 'nothing'} rebuilt, "
              f"{ticks} ticks)", flush=True)
    return 0


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("RALF_URL", DEFAULT_URL),
                        help=f"server URL (default: $RALF_URL or {DEFAULT_URL})")
    parser.add_argument("--token", default=os.environ.get("RALF_TOKEN"),
                        help="bearer token (default: $RALF_TOKEN)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")


def parser() -> argparse.ArgumentParser:
    """The ``ralf`` command's argument parser; each subcommand sets ``run`` to its function."""
    top = argparse.ArgumentParser(prog="ralf", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run a pipeline file: process and serve HTTP until ^C",
                       description="Import PIPELINE (a file defining build(server)), build it "
                                   "on a Ralf opened on --db, then process and serve.")
    p.add_argument("pipeline", help="Python file defining build(server)")
    p.add_argument("--db", default=None,
                   help="DuckDB file, or a postgresql:// URL (default: DuckDB in memory)")
    p.add_argument("--shard", type=int, default=0,
                   help="this worker's shard, 0..N-1 (PostgreSQL; default 0)")
    p.add_argument("--num-shards", type=int, default=1,
                   help="workers sharing the --db, each owning a hash partition of the keys")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free)")
    p.add_argument("--token", default=os.environ.get("RALF_TOKEN"),
                   help="require this bearer token on every request (default: $RALF_TOKEN)")
    p.add_argument("--interval", type=float, default=0.0,
                   help="seconds between ticks (default 0: as fast as there is work)")
    p.add_argument("--log-every", type=float, default=10.0,
                   help="seconds between progress lines (default 10)")
    p.set_defaults(run=serve)

    for name, run, text in [("tables", tables, "list tables with kinds and row counts"),
                            ("status", status, "per table: rows, stale keys, processed, shed, "
                                               "staleness p50/p99")]:
        p = sub.add_parser(name, help=text, description=text)
        _add_connection(p)
        p.set_defaults(run=run)

    p = sub.add_parser("query", help="one row by key", description="Print one row by key.")
    p.add_argument("table")
    p.add_argument("key")
    p.add_argument("--metadata", action="store_true", help="also staleness metadata")
    _add_connection(p)
    p.set_defaults(run=query)

    p = sub.add_parser("forget", help="forget a key of a changelog source",
                       description="Remove a key's records from a changelog source and every "
                                   "row, history version and operator state derived from "
                                   "them (the server must run with a token).")
    p.add_argument("table", help="the changelog source")
    p.add_argument("key")
    _add_connection(p)
    p.set_defaults(run=forget)

    p = sub.add_parser("bulk", help="all rows of a table", description="Print all rows.")
    p.add_argument("table")
    p.add_argument("--csv", action="store_true", help="CSV on stdout")
    _add_connection(p)
    p.set_defaults(run=bulk)

    p = sub.add_parser("sql", help="one read-only SQL query", description="Run one SELECT.")
    p.add_argument("query")
    p.add_argument("--csv", action="store_true", help="CSV on stdout")
    _add_connection(p)
    p.set_defaults(run=sql)

    p = sub.add_parser(
        "shell", help="the duckdb shell (psql on PostgreSQL) on the database",
        description="Open the duckdb shell. With --db, on that file (no server may hold it). "
                    "Otherwise ask the server at --url for a consistent read-only snapshot "
                    "and open that. On PostgreSQL, psql, read-only when opened via a server.")
    p.add_argument("--db", default=None,
                   help="DuckDB file not held by a running server, or a postgresql:// URL")
    p.add_argument("shell_args", nargs="*",
                   help="after --, passed to duckdb or psql (e.g. -- -c 'SELECT 1')")
    _add_connection(p)
    p.set_defaults(run=shell)
    _add_evolve(sub)
    return top


def _add_evolve(sub: Any) -> None:
    """The ``plan`` and ``apply`` subcommands (docs/evolve.md)."""
    p = sub.add_parser("plan", help="what applying a pipeline file to --db would change",
                       description="Compare the tables PIPELINE defines with the ones --db "
                                   "stores: new, changed (and why), invalidated, removed.")
    p.add_argument("pipeline", help="Python file defining build(server)")
    p.add_argument("--db", required=True, help="DuckDB file, or a postgresql:// URL")
    p.add_argument("--json", action="store_true", help="the plan as JSON")
    p.set_defaults(run=plan_pipeline)
    p = sub.add_parser("apply", help="carry out the plan: create, rebuild, drop tables",
                       description="Print the plan, then create new tables and rebuild "
                                   "changed ones and their descendants by replay.")
    p.add_argument("pipeline", help="Python file defining build(server)")
    p.add_argument("--db", required=True, help="DuckDB file, or a postgresql:// URL")
    p.add_argument("--drop-removed", action="store_true",
                   help="drop stored tables the pipeline no longer defines")
    p.set_defaults(run=apply_pipeline)


def main(argv: list[str] | None = None) -> int:
    """Run the ``ralf`` command; returns the exit status (1 after printing a RalfError)."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except RalfError as exc:
        print(f"ralf: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

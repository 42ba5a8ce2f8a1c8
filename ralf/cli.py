"""The ``ralf`` command: serve a pipeline, and query or inspect a running server.

A pipeline is a Python file or module that defines ``build(server)``: it creates the
sources and tables on the ``Ralf`` it is given (see docs/serving.md). The command is built
on argparse (docs/cli.md says why); each subcommand is one function taking the parsed
arguments and one ``_command`` registration in :func:`parser`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
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
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ralf
from ralf.client import DEFAULT_URL, RalfClient
from ralf.errors import RalfError
from ralf.logs import FORMATS, LEVELS, configure, mask_passwords
from ralf.storage import is_postgres_url

log = logging.getLogger("ralf")
# a process killed by SIGPIPE exits with 128 + 13: what `ralf bulk t | head` reports
BROKEN_PIPE_STATUS = 141


def load_pipeline(target: str) -> Callable[..., Any]:
    """Import a pipeline and return its build function. ``target`` is a file
    (``path/to/pipeline.py``), a file and a name in it (``pipeline.py:make``), or a module
    and a name in it (``mypkg.pipeline:build``, imported with the current directory on
    ``sys.path``); the name defaults to ``build``. Raises RalfError naming the file and
    line of an error in the pipeline's code."""
    spec, _, attr = target.partition(":") if not Path(target).is_file() else (target, "", "")
    attr = attr or "build"
    if spec.endswith(".py") or os.sep in spec or Path(spec).is_file():
        file = Path(spec)
        if not file.is_file():
            raise RalfError(f"no pipeline file {spec!r}")
        found = importlib.util.spec_from_file_location(f"ralf_pipeline_{file.stem}", file)
        module = importlib.util.module_from_spec(found)
        sys.path.insert(0, str(file.resolve().parent))  # its neighbours import as usual
        where = str(file)

        def load() -> Any:
            found.loader.exec_module(module)
            return module
    else:
        sys.path.insert(0, os.getcwd())  # as `python -m` does
        try:
            found = importlib.util.find_spec(spec)
        except ImportError as exc:  # a parent package that is not there
            raise RalfError(f"no module {spec!r}: {exc}") from None
        if found is None:
            raise RalfError(f"no module {spec!r} (a file needs its path, e.g. ./{spec}.py)")
        where = found.origin or spec

        def load() -> Any:
            return importlib.import_module(spec)
    try:
        module = load()
    except Exception as exc:  # noqa: BLE001 - the user's code: any error, with its line
        raise RalfError(located(exc, where)) from exc
    build: Any = module
    for part in attr.split("."):
        build = getattr(build, part, None)
    if not callable(build):
        raise RalfError(f"{where} must define {attr}(server)")
    return build


def located(exc: BaseException, file: str) -> str:
    """``exc`` as one line naming where in ``file`` it happened: ``file:line: Type:
    message`` (a syntax error: its own file and line, wherever that is)."""
    if isinstance(exc, SyntaxError):
        return f"{_shown(exc.filename)}:{exc.lineno}: {type(exc).__name__}: {exc.msg}"
    target = os.path.realpath(file)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if os.path.realpath(f.filename) == target]
    where = f"{_shown(file)}:{frames[-1].lineno}" if frames else _shown(file)
    return f"{where}: {type(exc).__name__}: {exc}"


def _shown(path: str | None) -> str:
    """A path as the user would type it: relative when under the current directory."""
    if not path or not os.path.isabs(path):
        return str(path)
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def serve(args: argparse.Namespace) -> int:
    """Run a pipeline: build it on a ``Ralf`` opened on ``--db``, process and serve HTTP
    until SIGINT or SIGTERM, logging a progress line every ``--log-every`` seconds."""
    from ralf.server import Ralf

    build = load_pipeline(args.pipeline)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Ralf(args.db, shard=args.shard, num_shards=args.num_shards,
              evolve=args.evolve) as server:
        _build(build, server, args.pipeline)
        server.start(interval=args.interval)
        url = server.serve(args.host, args.port, token=_token(args),
                           access_log=args.access_log)
        database = mask_passwords(args.db) if args.db else "in memory"
        print(f"ralf: serving {args.pipeline} on {url} (database: {database}; "
              f"console: {url}/ui)", flush=True)
        progress = logging.getLogger("ralf.progress")
        while not stop.wait(args.log_every if args.log_every > 0 else None):  # 0: no lines
            progress.info("%s", server.summary())
        log.info("stopping")
    return 0


def _build(build: Callable[..., Any], server: Any, pipeline: str) -> None:
    """Call the pipeline's ``build(server)``; any error it raises names its file and line."""
    try:
        build(server)
    except Exception as exc:  # noqa: BLE001 - the user's code: any error, with its line
        code = getattr(build, "__code__", None)
        raise RalfError(located(exc, code.co_filename if code else pipeline)) from exc


def _token(args: argparse.Namespace) -> str | None:
    if args.token is not None:
        log.warning("--token is visible to other users of this machine (ps, shell "
                    "history): set RALF_TOKEN instead")
        return args.token
    return os.environ.get("RALF_TOKEN") or None


def _client(args: argparse.Namespace) -> RalfClient:
    return RalfClient(args.url, timeout=args.timeout, token=_token(args))


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=_json_value))


def _json_value(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if hasattr(value, "item"):  # a numpy scalar
        return value.item()
    return str(value)


def tables(args: argparse.Namespace) -> int:
    """Print each table's name, kind, whether it is lazy, and its row count."""
    found = _client(args).tables()
    if args.json:
        _print_json(found)
        return 0
    for entry in found:
        lazy = " lazy" if entry.get("lazy") else ""
        print(f"{entry['name']:<30} {entry['kind']:<8}{lazy:<5} {entry['rows']:>12,} rows")
    return 0


def query(args: argparse.Namespace) -> int:
    """Print one row by key, a field per line (``--metadata``: with its staleness)."""
    record = _client(args).point_query(args.table, args.key, with_metadata=args.metadata)
    if args.json:
        _print_json(record.to_dict())
        return 0
    for name, value in record.to_dict().items():
        print(f"{name}: {value!r}")
    return 0


def forget(args: argparse.Namespace) -> int:
    """Forget a key of a changelog source on the server; print what was removed."""
    removed = _client(args).forget(args.table, args.key)
    if args.json:
        _print_json(removed)
        return 0
    for table, rows in sorted(removed.items()):
        print(f"{table:<40} {rows:>10,} removed")
    return 0


def bulk(args: argparse.Namespace) -> int:
    """Print all rows of a table (as CSV with ``--csv``, JSON lines with ``--json``); how
    long the fetch took is logged."""
    start = time.perf_counter()
    log.info("fetching %s ...", args.table)
    df = _client(args).bulk_query(args.table)
    log.info("fetched %s rows in %.2f s", f"{len(df):,}", time.perf_counter() - start)
    _print_frame(df, args)
    return 0


def sql(args: argparse.Namespace) -> int:
    """Print the result of one read-only SQL query (as CSV with ``--csv``, JSON lines with
    ``--json``)."""
    _print_frame(_client(args).sql(args.query), args)
    return 0


def _print_frame(df: Any, args: argparse.Namespace) -> None:
    if args.csv:
        df.to_csv(sys.stdout, index=False)
    elif args.json:  # a row per line, written in chunks as CSV is: `| head` parses it
        for start in range(0, len(df), 1000):
            chunk = df.iloc[start:start + 1000]
            sys.stdout.write(chunk.to_json(orient="records", lines=True, date_format="iso")
                             .rstrip("\n") + "\n")
    else:
        print(df.to_string(index=False))


def status(args: argparse.Namespace) -> int:
    """Print the database's schema version, the tick count, each table's rows, staleness
    and counters, then each problem keeping the server from serving fresh features."""
    client = _client(args)
    rows = {t["name"]: t["rows"] for t in client.tables()}
    metrics = client.metrics()
    problems = client.problems()
    if args.json:
        _print_json({"schema_version": metrics.get("schema_version"),
                     "ticks": metrics["ticks"],
                     "tables": [{"name": name, "rows": rows.get(name, 0), **m}
                                for name, m in metrics["tables"].items()],
                     "problems": problems})
        return 0
    print(f"schema version: {_n(metrics.get('schema_version'))}")
    print(f"ticks: {metrics['ticks']:,}")
    header = (f"{'table':<24}{'kind':<9}{'rows':>10}{'stale':>8}{'processed':>11}{'shed':>9}"
              f"{'rejected':>9}{'p50 s':>9}{'p99 s':>9}{'quarant.':>9}")
    print(header)
    for name, m in metrics["tables"].items():
        print(f"{name:<24}{m['kind']:<9}{rows.get(name, 0):>10,}"
              f"{_n(m.get('stale_keys')):>8}{m['processed']:>11,}{m['shed']:>9,}"
              f"{m['rejected']:>9,}{_s(m.get('staleness_p50')):>9}"
              f"{_s(m.get('staleness_p99')):>9}{_n(m.get('quarantined_keys')):>9}")
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
        log.info("read-only view of the server's database: %s", target)
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
        _build(build, scratch, pipeline)
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
        _build(build, server, args.pipeline)
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
    _add_token(parser, "bearer token; prefer $RALF_TOKEN (the default)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")


def _add_token(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--token", default=None,
                        help=text + ": a token on the command line is visible in ps")


def _add_output(parser: argparse.ArgumentParser, csv: bool = False) -> None:
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true",
                         help="JSON lines, a row per line" if csv else "JSON on stdout")
    if csv:
        formats.add_argument("--csv", action="store_true", help="CSV on stdout")


def _logging_options(defaults: bool) -> argparse.ArgumentParser:
    """The options every subcommand takes too; after the subcommand they default to
    SUPPRESS so that they do not overwrite the same option given before it."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("logging")
    group.add_argument("--log-level", choices=LEVELS,
                       default="info" if defaults else argparse.SUPPRESS,
                       help="least severe records logged, on stderr (default info; debug "
                            "adds tracebacks)")
    group.add_argument("--log-format", choices=FORMATS,
                       default="text" if defaults else argparse.SUPPRESS,
                       help="text: key=value pairs; json: a JSON object per line "
                            "(default text)")
    return options


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    """The ``ralf`` command's argument parser; each subcommand sets ``run`` to its function."""
    top = argparse.ArgumentParser(
        prog="ralf", parents=[_logging_options(True)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="ralf: feature tables kept incrementally up to date. Serve a pipeline, "
                    "and query or inspect a running server.",
        epilog="examples:\n"
               "  ralf serve pipeline.py --db features.duckdb --port 8000\n"
               "  ralf serve mypkg.pipeline:build --db postgresql://ralf@db/features\n"
               "  RALF_TOKEN=... ralf status --json\n"
               "  ralf bulk average --csv | head\n\n"
               "Errors are one 'ralf: error: ...' line on stderr (exit 1; 2 for a bad "
               "option); --log-level debug adds the traceback.")
    top.add_argument("--version", action="version", version=f"ralf {ralf.__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _logging_options(False)

    def _command(name: str, run: Callable[[argparse.Namespace], int], text: str,
                 description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=description or text,
                           parents=[common])
        p.set_defaults(run=run)
        return p

    p = _command("serve", serve, "run a pipeline: process and serve HTTP until ^C",
                 "Import PIPELINE, build it on a Ralf opened on --db, then process and "
                 "serve until SIGINT or SIGTERM.")
    p.add_argument("pipeline", metavar="PIPELINE",
                   help="a file defining build(server) (path/to/pipeline.py), a name in a "
                        "file (pipeline.py:make) or in a module (mypkg.pipeline:build)")
    p.add_argument("--db", default=None,
                   help="DuckDB file, or a postgresql:// URL (default: DuckDB in memory)")
    p.add_argument("--shard", type=_count(0), default=0,
                   help="this worker's shard, 0..N-1 (PostgreSQL; default 0)")
    p.add_argument("--num-shards", type=_count(1), default=1,
                   help="workers sharing the --db, each owning a hash partition of the keys")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_count(0), default=8000,
                   help="port (default 8000; 0 = any free)")
    _add_token(p, "require this bearer token on every request; prefer $RALF_TOKEN")
    p.add_argument("--interval", type=float, default=0.0,
                   help="seconds between ticks (default 0: as fast as there is work)")
    p.add_argument("--log-every", type=float, default=10.0,
                   help="seconds between progress lines, logged at info (default 10; "
                        "0: none)")
    p.add_argument("--access-log", action="store_true",
                   help="log every HTTP request at info level (default off)")
    p.add_argument("--evolve", choices=("refuse", "rebuild"), default="refuse",
                   help="a table the database stores with another definition: refuse to "
                        "start (default), or rebuild it beside the old version, which "
                        "serves until the new one has caught up (docs/evolve.md)")

    p = _command("tables", tables, "list tables with kinds and row counts")
    _add_output(p)
    _add_connection(p)

    p = _command("status", status, "schema version, then per table: rows, stale keys, "
                                    "processed, shed, staleness p50/p99; then problems")
    _add_output(p)
    _add_connection(p)

    p = _command("query", query, "one row by key")
    p.add_argument("table")
    p.add_argument("key")
    p.add_argument("--metadata", action="store_true", help="also staleness metadata")
    _add_output(p)
    _add_connection(p)

    p = _command("forget", forget, "forget a key of a changelog source",
                 "Remove a key's records from a changelog source and every row, history "
                 "version and operator state derived from them (the server must run with "
                 "a token).")
    p.add_argument("table", help="the changelog source")
    p.add_argument("key")
    _add_output(p)
    _add_connection(p)

    p = _command("bulk", bulk, "all rows of a table")
    p.add_argument("table")
    _add_output(p, csv=True)
    _add_connection(p)

    p = _command("sql", sql, "one read-only SQL query")
    p.add_argument("query")
    _add_output(p, csv=True)
    _add_connection(p)

    p = _command("shell", shell, "the duckdb shell (psql on PostgreSQL) on the database",
                 "Open the duckdb shell. With --db, on that file (no server may hold it). "
                 "Otherwise ask the server at --url for a consistent read-only snapshot "
                 "and open that. On PostgreSQL, psql, read-only when opened via a server.")
    p.add_argument("--db", default=None,
                   help="DuckDB file not held by a running server, or a postgresql:// URL")
    p.add_argument("shell_args", nargs="*",
                   help="after --, passed to duckdb or psql (e.g. -- -c 'SELECT 1')")
    _add_connection(p)

    pipeline_help = ("a file defining build(server) (path/to/pipeline.py), a name in a "
                     "file (pipeline.py:make) or in a module (mypkg.pipeline:build)")
    p = _command("plan", plan_pipeline, "what applying a pipeline to --db would change",
                 "Compare the tables PIPELINE defines with the ones --db stores: new, "
                 "changed (and why), invalidated, removed (docs/evolve.md).")
    p.add_argument("pipeline", metavar="PIPELINE", help=pipeline_help)
    p.add_argument("--db", required=True, help="DuckDB file, or a postgresql:// URL")
    p.add_argument("--json", action="store_true", help="the plan as JSON")

    p = _command("apply", apply_pipeline, "carry out the plan: create, rebuild, drop tables",
                 "Print the plan, then create new tables and rebuild changed ones and their "
                 "descendants by replay, each beside its old version and swapped in one "
                 "transaction (no other process may serve --db meanwhile; `ralf serve "
                 "--evolve rebuild` does the same while serving).")
    p.add_argument("pipeline", metavar="PIPELINE", help=pipeline_help)
    p.add_argument("--db", required=True, help="DuckDB file, or a postgresql:// URL")
    p.add_argument("--drop-removed", action="store_true",
                   help="drop stored tables the pipeline no longer defines")
    return top


def main(argv: list[str] | None = None) -> int:
    """Run the ``ralf`` command; returns the exit status: 0, 1 after an error (one
    ``ralf: error:`` line on stderr, the traceback only at ``--log-level debug``), 2 for a
    bad option, 141 when stdout was closed early (``| head``)."""
    args = parser().parse_args(argv)
    restore = configure(args.log_level, args.log_format)
    try:
        return args.run(args)
    except BrokenPipeError:  # the reader went away: nothing more to say, and no one to hear
        _discard_stdout()
        return BROKEN_PIPE_STATUS
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line, not a traceback
        log.debug("the error's traceback", exc_info=True)
        plain = isinstance(exc, (RalfError, ValueError, OSError))
        message = str(exc) if plain else f"{type(exc).__name__}: {exc}"
        line = " ".join(mask_passwords(message).split())  # one line, whatever the driver says
        print(f"ralf: error: {line}", file=sys.stderr, flush=True)
        return 1
    finally:
        restore()


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail
    again (docs.python.org: "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (in-process callers)
        pass


if __name__ == "__main__":
    sys.exit(main())

"""The ``ralf`` command (ralf/cli.py): what an operator sees of a running server."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import urllib3

import ralf
from ralf.cli import parser as cli_parser
from ralf.storage import migrate
from ralf.testing import drop_postgres_database, new_postgres_database

ROOT = Path(__file__).resolve().parents[1]


def test_a_source_that_is_not_there_makes_the_server_degraded(tmp_path):
    """`ralf serve` on a CSV path that does not exist: the reason is logged, shown by
    `ralf status`, and /ready answers 503 with it (/health stays 200: the process lives)."""
    root = ROOT
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text("from tests.pipelines import RATINGS\n\n"
                        "def build(server):\n"
                        f"    server.create_csv_source({str(tmp_path / 'missing.csv')!r}, "
                        "RATINGS, name='ratings')\n")
    proc = subprocess.Popen([sys.executable, "-m", "ralf.cli", "serve", str(pipeline),
                             "--port", "0", "--log-every", "3600"], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split(" on ")[1].split()[0]
        assert urllib3.request("GET", url + "/health").status == 200
        deadline = time.monotonic() + 30
        while (ready := urllib3.request("GET", url + "/ready")).status == 200:
            assert time.monotonic() < deadline, "never reported degraded"
        assert ready.status == 503
        (problem,) = json.loads(ready.data)["problems"]
        assert problem["table"] == "ratings" and "missing.csv" in problem["reason"]
        status = subprocess.run([sys.executable, "-m", "ralf.cli", "status", "--url", url],
                                cwd=root, capture_output=True, text=True)
        assert "problem: source 'ratings'" in status.stdout and "missing.csv" in status.stdout
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "missing.csv" in err  # logged, with the reason


# ---- the command's surface: version, help, errors, output formats, pipes, secrets ----------

PIPELINE = '''from ralf import Schema
from ralf.testing import ListSource

EVENTS = Schema("k", {"k": int, "g": int, "v": str})


def make(server):
    rows = [{"k": i, "g": i % 500, "v": f"value;{i}"} for i in range(ROWS)]
    source = server.create_source(ListSource, args=(EVENTS, rows), name="events")
    source.sql("SELECT g, count(*) AS n FROM events WHERE g IS NOT NULL "
               "GROUP BY g", name="per_key")
'''
ROWS = 20_000  # the CSV is ~1 MB: far more than a pipe holds, so `| head` closes it early


def _ralf(*args: str, env: dict | None = None, cwd: Path = ROOT
          ) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "RALF_TOKEN"}  # only if given
    environment.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", "ralf.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failure prints (and nothing that looks like a traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("ralf: error:")]
    return line


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`ralf serve featpipe.pipeline:make` (a module:attr target, imported from the
    current directory), its token from RALF_TOKEN; yields (url, token)."""
    where = tmp_path_factory.mktemp("served")
    (where / "featpipe").mkdir()
    (where / "featpipe" / "__init__.py").write_text("")
    (where / "featpipe" / "pipeline.py").write_text(PIPELINE.replace("ROWS", str(ROWS)))
    token = "t0ken-from-env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ralf.cli", "serve", "featpipe.pipeline:make", "--port", "0",
         "--db", str(where / "served.duckdb"), "--log-every", "3600"], cwd=where,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RALF_TOKEN": token},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert "serving featpipe.pipeline:make" in first, first + proc.stderr.read()
    url = first.split(" on ")[1].split()[0]
    deadline = time.monotonic() + 60
    while json.loads(_ralf("status", "--json", "--url", url, env={"RALF_TOKEN": token})
                     .stdout)["tables"][0]["ingested"] < ROWS:
        assert time.monotonic() < deadline, "the pipeline did not ingest"
    yield url, token
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert token not in err and "Traceback" not in err


def test_version_is_the_packages():
    result = _ralf("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"ralf {ralf.__version__}"


def test_help_has_no_restructuredtext_markup():
    top = cli_parser()
    helps = [top.format_help()] + [p.format_help() for p in _subparsers(top).values()]
    assert len(helps) >= 9
    for text in helps:
        assert "``" not in text and ":class:" not in text and ":meth:" not in text, text
    assert "usage: ralf" in _ralf("--help").stdout


def _subparsers(top: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_a_pipeline_with_a_syntax_error_is_one_line_naming_file_and_line(tmp_path):
    (tmp_path / "broken.py").write_text("def build(server):\n    x = (\n")
    result = _ralf("serve", str(tmp_path / "broken.py"))
    assert result.returncode == 1
    assert "broken.py:2: SyntaxError" in _error_line(result)


def test_an_error_importing_or_building_a_pipeline_names_its_line(tmp_path):
    (tmp_path / "imports.py").write_text("import os\nimport no_such_module_here\n")
    result = _ralf("serve", str(tmp_path / "imports.py"))
    assert result.returncode == 1
    assert "imports.py:2: ModuleNotFoundError" in _error_line(result)
    (tmp_path / "builds.py").write_text("def make(server):\n\n    server.table('nope')\n")
    result = _ralf("serve", f"{tmp_path / 'builds.py'}:make", "--port", "0")
    assert result.returncode == 1
    assert "builds.py:3: TableNotFound" in _error_line(result)
    result = _ralf("serve", f"{tmp_path / 'builds.py'}:missing")
    assert "must define missing(server)" in _error_line(result)


def test_bad_options_are_usage_errors_and_a_traceback_only_at_debug(tmp_path):
    for flags in (["--shard", "-1"], ["--num-shards", "0"], ["--port", "x"]):
        result = _ralf("serve", "pipeline.py", *flags)
        assert result.returncode == 2 and "ralf serve: error: argument" in result.stderr
    pipeline = tmp_path / "p.py"
    pipeline.write_text("def build(server):\n    pass\n")
    result = _ralf("serve", str(pipeline), "--shard", "2", "--num-shards", "2")
    assert result.returncode == 1 and "shard" in _error_line(result)
    unreachable = ("tables", "--url", "http://127.0.0.1:9")
    result = _ralf(*unreachable)
    assert result.returncode == 1 and "no ralf server answers" in _error_line(result)
    debug = _ralf("--log-level", "debug", *unreachable)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_json_output_parses(served):
    url, token = served
    env = {"RALF_TOKEN": token}
    tables = json.loads(_ralf("tables", "--json", "--url", url, env=env).stdout)
    assert {t["name"]: t["rows"] for t in tables} == {"events": ROWS, "per_key": 500}
    status = json.loads(_ralf("status", "--json", "--url", url, env=env).stdout)
    assert status["schema_version"] == len(migrate.available()) and status["problems"] == []
    text = _ralf("status", "--url", url, env=env).stdout
    assert text.startswith(f"schema version: {len(migrate.available())}\n")
    row = json.loads(_ralf("query", "per_key", "7", "--json", "--url", url, env=env).stdout)
    assert row == {"g": 7, "n": ROWS // 500}
    lines = _ralf("sql", "SELECT k, v FROM events ORDER BY _ralf_seq LIMIT 3", "--json",
                  "--url", url, env=env).stdout.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"k": i, "v": f"value;{i}"} for i in range(3)]
    bulk = _ralf("bulk", "per_key", "--json", "--url", url, env=env).stdout.splitlines()
    assert len(bulk) == 500 and json.loads(bulk[0])["n"] == ROWS // 500


def test_the_token_comes_from_the_environment_and_argv_is_warned_about(served):
    url, token = served
    refused = _ralf("tables", "--url", url)
    assert refused.returncode == 1 and "bearer token" in _error_line(refused)
    warned = _ralf("tables", "--url", url, "--token", token)
    assert warned.returncode == 0 and "RALF_TOKEN" in warned.stderr


@pytest.mark.parametrize("fmt", ["--csv", "--json"])
def test_a_closed_pipe_ends_quietly(served, fmt):
    url, token = served
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RALF_TOKEN": token}
    ralf_proc = subprocess.Popen([sys.executable, "-m", "ralf.cli", "bulk", "events", fmt,
                                  "--url", url], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=ralf_proc.stdout, stdout=subprocess.PIPE)
    ralf_proc.stdout.close()  # only head reads it now
    first = head.communicate(timeout=60)[0]
    err = ralf_proc.communicate(timeout=60)[1].decode()
    assert first.count(b"\n") == 1
    assert ralf_proc.returncode == 141, err
    assert "BrokenPipeError" not in err and "Traceback" not in err and "error" not in err


def test_a_database_password_is_never_printed(postgres_url, tmp_path):
    database = new_postgres_database(postgres_url)
    secret = "s3cret-pw"
    with_password = database.replace("postgres@", f"postgres:{secret}@")
    assert secret in with_password
    pipeline = tmp_path / "p.py"
    pipeline.write_text("def build(server):\n    pass\n")
    proc = subprocess.Popen([sys.executable, "-m", "ralf.cli", "serve", str(pipeline),
                             "--db", with_password, "--port", "0", "--log-level", "debug"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert "postgres:***@" in first, first
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
        drop_postgres_database(database)
    assert secret not in first + out + err
    unreachable = f"postgresql://postgres:{secret}@127.0.0.1:9/nowhere"
    for level in ("info", "debug"):  # the error line, and the traceback at debug
        result = _ralf("--log-level", level, "serve", str(pipeline), "--db", unreachable)
        assert result.returncode == 1 and secret not in result.stderr + result.stdout

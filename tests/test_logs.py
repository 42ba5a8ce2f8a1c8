"""ralf.logs: structured records, masked passwords, progress lines, operator tracebacks at
debug level and the optional HTTP access log."""

from __future__ import annotations

import io
import json
import logging

import pytest
import urllib3

from ralf import OperatorError, Ralf
from ralf.logs import KeyValueFormatter, configure, mask_passwords
from ralf.testing import ListSource
from tests.pipelines import COUNT, RATINGS, CountPerKey, FailsOnUser, ratings


@pytest.fixture
def records():
    """configure(...) to a buffer; returns a function giving the JSON records so far."""
    buffer = io.StringIO()
    undo = []

    def start(level: str) -> None:
        undo.append(configure(level, "json", buffer))

    def logged() -> list[dict]:
        return [json.loads(line) for line in buffer.getvalue().splitlines()]

    yield start, logged
    for restore in undo:
        restore()


def test_passwords_in_urls_are_masked():
    assert mask_passwords("postgresql://ralf:s3cret@db:5432/x and http://a:b@h/") == \
        "postgresql://ralf:***@db:5432/x and http://a:***@h/"
    assert mask_passwords("postgresql://ralf@db/x, a: b@c") == "postgresql://ralf@db/x, a: b@c"


def test_key_value_lines_carry_extra_fields_and_mask_passwords():
    record = logging.makeLogRecord({
        "name": "ralf", "levelname": "ERROR", "msg": "cannot open %s",
        "args": ("postgresql://u:pw@h/db",), "table": "ratings", "key": 7})
    line = KeyValueFormatter().format(record)
    assert "level=error logger=ralf" in line and "table=ratings key=7" in line
    assert 'msg="cannot open postgresql://u:***@h/db"' in line and "pw" not in line


def test_configure_sends_json_lines_and_restores_what_was_there(records):
    start, logged = records
    ralf_logger = logging.getLogger("ralf")
    before = (list(ralf_logger.handlers), ralf_logger.level, ralf_logger.propagate)
    restore = configure("warning", "json", io.StringIO())
    assert ralf_logger.propagate is False and ralf_logger.level == logging.WARNING
    restore()
    assert (list(ralf_logger.handlers), ralf_logger.level, ralf_logger.propagate) == before
    start("info")
    logging.getLogger("ralf.engine").info("hello %s", "there", extra={"table": "t"})
    (line,) = logged()
    assert line["msg"] == "hello there" and line["logger"] == "ralf.engine"
    assert line["level"] == "info" and line["table"] == "t" and "ts" in line


@pytest.mark.parametrize("every", [1e-9, None])
def test_run_logs_progress_lines(records, every):
    start, logged = records
    start("info")
    with Ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(300, users=5)),
                                      kwargs={"batch_size": 100}, name="ratings")
        source.map(CountPerKey, args=(COUNT,), name="counts")
        server.run(progress_every=every)
    lines = [r["msg"] for r in logged() if r["logger"] == "ralf.progress"]
    if every is None:
        assert lines == []
    else:
        assert len(lines) >= 3 and lines[-1].endswith(
            "300 records ingested, 300 processed, 0 stale keys")


@pytest.mark.parametrize("level", ["info", "debug"])
def test_an_operator_failure_has_its_traceback_at_debug_level(records, level):
    start, logged = records
    start(level)
    with Ralf() as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(20, users=3)),
                                      name="ratings")
        source.map(FailsOnUser, args=(COUNT, 1), name="counts")
        with pytest.raises(OperatorError):
            server.step()
    (failure,) = [r for r in logged() if r["level"] == "error"]
    assert failure["table"] == "counts" and failure["key"] == 1 and "boom" in failure["msg"]
    if level == "debug":
        assert "Traceback" in failure["exc"] and "in on_record" in failure["exc"]
    else:
        assert "exc" not in failure


@pytest.mark.parametrize("access_log", [True, False])
def test_the_access_log_is_off_unless_asked(records, access_log):
    start, logged = records
    start("info")
    with Ralf() as server:
        url = server.serve(port=0, access_log=access_log)
        assert urllib3.request("GET", url + "/tables").status == 200
    # closing stopped and joined the HTTP thread: every record it made is in
    access = [r for r in logged() if r["logger"] == "uvicorn.access"]
    if access_log:
        (line,) = access
        assert line["method"] == "GET" and line["path"] == "/tables" and line["status"] == 200
    else:
        assert access == []

"""The probes: ``GET /health`` (liveness) answers whenever the process does, without the
token; ``GET /ready`` answers 503 with the problems, worst first, in each degraded state,
each produced for real (``Ralf.problems()``)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import sqlalchemy
import urllib3

from ralf import Ralf, RalfClient, RalfError, SourceOperator
from ralf.storage import migrate
from ralf.testing import ListSource, ManualClock, drop_postgres_database, new_postgres_database
from tests.pipelines import COUNT, RATINGS, FailsOnUser, ratings

TOKEN = "s3cret"


def _get(url: str, path: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = urllib3.request("GET", url + path, headers=headers)
    return response.status, json.loads(response.data)


def _ready_problems(url: str, path: str = "/ready") -> list[dict]:
    status, body = _get(url, path, TOKEN)
    assert (status, body["status"]) == ((503, "degraded") if body["problems"] else
                                        (200, "ready")), body
    return body["problems"]


class Refused(SourceOperator):
    """A source whose upstream refuses every read."""

    def __init__(self, schema):
        pass

    def next(self):
        raise ConnectionRefusedError("upstream at 10.0.0.9:9092 refused")


class Exits(SourceOperator):
    """A source that ends the thread calling it (code calling sys.exit)."""

    def __init__(self, schema):
        pass

    def next(self):
        raise SystemExit("the source called sys.exit")


def test_ready_then_degraded_by_quarantined_keys_with_reasons_for_the_token_only(make_ralf):
    with make_ralf(max_failures=1) as server:
        ratings_table = server.create_source(ListSource, args=(RATINGS, ratings(40)),
                                             name="ratings")
        url = server.serve(port=0, token=TOKEN)
        assert _ready_problems(url) == []
        ratings_table.map(FailsOnUser, args=(COUNT, 3), name="counts")
        with pytest.raises(RalfError, match="boom"):
            server.run()
        assert _get(url, "/health") == (200, {"status": "ok"})  # no token needed
        (problem,) = _ready_problems(url)
        assert problem["table"] == "counts" and problem["problem"] == "quarantined keys"
        assert problem["keys"] == 1 and "boom" in problem["reason"]
        status, anonymous = _get(url, "/ready")  # no token: the probe, without the reasons
        assert status == 503 and anonymous["problems"] == [{**problem, "reason": None}]


def test_a_source_given_up_on_is_named_with_its_reason(make_ralf):
    with make_ralf(max_failures=1) as server:
        server.create_source(Refused, args=(RATINGS,), name="ratings")
        with pytest.raises(RalfError, match="refused"):
            server.run()
        (problem,) = _ready_problems(server.serve(port=0, token=TOKEN))
        assert (problem["table"], problem["kind"], problem["problem"]) == (
            "ratings", "source", "given up")
        assert "10.0.0.9:9092 refused" in problem["reason"]


def test_a_table_behind_by_more_than_max_staleness(make_ralf):
    clock = ManualClock()
    with make_ralf(clock=clock) as server:
        source = server.create_source(ListSource, args=(RATINGS, ratings(40)), name="ratings")
        source.map(FailsOnUser, args=(COUNT, 3), name="counts")
        with pytest.raises(RalfError, match="boom"):
            server.step()  # user 3 failed once: retried later, its appends still pending
        url = server.serve(port=0, token=TOKEN)
        clock.advance(100)
        assert _ready_problems(url, "/ready?max_staleness=1000") == []
        assert _ready_problems(url) == []  # not asked: staleness is not checked
        (problem,) = _ready_problems(url, "/ready?max_staleness=10")
        assert (problem["table"], problem["problem"]) == ("counts", "behind")
        assert problem["staleness_max"] >= 100 and "more than 10 s" in problem["reason"]
        remote, local = RalfClient(url, token=TOKEN), RalfClient(server)
        assert remote.problems(max_staleness=10) == local.problems(max_staleness=10) == [
            problem]
        assert remote.problems() == []
        status, body = _get(url, "/ready?max_staleness=soon", TOKEN)
        assert status == 422 and body["error"] == "ValidationError"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_background_processing_that_died_is_named(make_ralf):
    with make_ralf() as server:
        server.create_source(Exits, args=(RATINGS,), name="ratings")
        url = server.serve(port=0, token=TOKEN)
        server.start()
        deadline = time.monotonic() + 30
        while not (problems := _get(url, "/ready", TOKEN)[1]["problems"]):
            assert time.monotonic() < deadline, "the dead loop was never reported"
        assert [p["problem"] for p in problems] == ["processing stopped"]
        assert problems[0]["table"] is None and problems[0]["kind"] == "processing"
        assert _get(url, "/health")[0] == 200


class Proxy:
    """A TCP forwarder on loopback between ralf and PostgreSQL, which can be cut (every
    connection closed, new ones refused) and mended: the network between them failing."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open, self.sockets, self.lock = True, [], threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # the listener closed: the test ended
                return
            if not self.open:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass  # cut
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the other side
                s.close()
            self.sockets.clear()

    def mend(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def postgres_database(postgres_url):
    url = new_postgres_database(postgres_url)
    yield url
    drop_postgres_database(url)


def test_postgresql_unreachable_then_back(postgres_database):
    parsed = sqlalchemy.make_url(postgres_database)
    proxy = Proxy(parsed.port)
    try:
        with Ralf(parsed.set(port=proxy.port).render_as_string(hide_password=False)) as server:
            server.create_source(ListSource, args=(RATINGS, ratings(40)), name="ratings")
            server.run()
            url = server.serve(port=0, token=TOKEN)
            assert _ready_problems(url) == []
            proxy.cut()
            (problem,) = _ready_problems(url)
            assert (problem["table"], problem["kind"], problem["problem"]) == (
                None, "storage", "storage unreachable")
            assert problem["reason"]
            assert _get(url, "/health")[0] == 200  # alive: a restart would not help
            proxy.mend()
            # each HTTP worker thread's reader session meets its lost connection once
            for _ in range(100):
                if not _ready_problems(url):
                    break
            else:
                pytest.fail("still unreachable after the network came back")
    finally:
        proxy.close()


def test_a_database_schema_other_than_this_ralfs(postgres_database):
    import psycopg

    expected = len(migrate.available())
    with Ralf(postgres_database) as server, psycopg.connect(postgres_database,
                                                            autocommit=True) as con:
        url = server.serve(port=0, token=TOKEN)
        con.execute("DELETE FROM ralf.schema_migrations WHERE version = %s", [expected])
        (problem,) = _ready_problems(url)
        assert (problem["kind"], problem["problem"]) == ("schema", "migrations pending")
        con.execute("INSERT INTO ralf.schema_migrations VALUES (%s, 'x', now()), "
                    "(%s, 'from a newer ralf', now())", [expected, expected + 1])
        (problem,) = _ready_problems(url)
        assert problem["problem"] == "schema newer than this ralf"
        assert f"at migration {expected + 1}" in problem["reason"]

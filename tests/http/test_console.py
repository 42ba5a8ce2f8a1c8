"""The web console (/ui) in a real headless Chromium against a real server on 127.0.0.1,
and its JSON routes."""

from __future__ import annotations

import json

import pytest
import urllib3

from ralf import Operator, RalfError, Record
from ralf.http import console
from ralf.server import Ralf
from ralf.testing import ListSource
from tests.pipelines import AVERAGE, COUNT, RATINGS, AverageRating, CountPerKey, ratings
from tests.services import chromium

BAD = {"user": 3, "movie": 1, "rating": "five stars"}


class RatedBefore(Operator):
    """How many ratings the user had before this one (a lookup join into ``average``)."""

    def on_record(self, record: Record, average: Record | None) -> Record:
        return Record(user=record.user, count=average.n if average else 0)


class Fragile(Operator):
    """Fails on user 5's records: the key is quarantined (max_failures=1)."""

    def on_record(self, record: Record) -> Record:
        if record.user == 5:
            raise ValueError("user 5 breaks me")
        return Record(user=record.user, count=1)


def _build(server: Ralf) -> None:
    rows = ratings(400, users=12)
    rows.insert(150, BAD)  # refused at the door: a rejected record
    source = server.create_source(ListSource, args=(RATINGS, rows), kwargs={"batch_size": 40},
                                  name="ratings")
    average = source.map(AverageRating, args=(AVERAGE,), name="average")
    source.map(CountPerKey, args=(COUNT,), name="counts", lazy=True)
    source.map(CountPerKey, args=(COUNT,), name="counts_budgeted", budget=5)
    source.join(average, RatedBefore, args=(COUNT,), on="user", name="rated_before")
    source.aggregate(by="user", name="by_user", n=("*", "count"), top=("rating", "max"))
    source.map(Fragile, args=(COUNT,), name="fragile")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with Ralf(str(tmp_path_factory.mktemp("console") / "console.duckdb"),
              max_failures=1) as server:
        _build(server)
        with pytest.raises(RalfError):
            server.run()  # the errors come at the end; the rest is applied
        assert {type(e).__name__ for e in server.errors} == {"SchemaError", "OperatorError"}
        assert server.quarantined("fragile") == [5]
        server.start(interval=0.05)
        yield server, server.serve(port=0)


def _get(url: str, token: str | None = None) -> object:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = urllib3.request("GET", url, headers=headers)
    assert answer.status == 200, answer.data
    return json.loads(answer.data)


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def _wait(driver, condition, timeout: float = 20.0):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page redraws its metrics every 2 s: an element found may be replaced by the next
    return WebDriverWait(driver, timeout, ignored_exceptions=(
        StaleElementReferenceException,)).until(condition)


def _cells(driver, css: str) -> list[list[str]]:
    """The cells of the rows ``css`` selects, read in one step in the page (atomic with
    respect to its redraws)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map("
        "tr => [...tr.querySelectorAll('td')].map(td => td.textContent))", css)


def _attributes(driver, css: str, *names: str) -> list[list[str]]:
    """Attributes of the elements ``css`` selects, read in one step in the page."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map("
        "e => arguments[1].map(n => e.getAttribute(n)))", css, list(names))


def _open(driver, table: str) -> None:
    """Click a table in the graph and wait until its views are shown."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f'#graph .node[data-table="{table}"]').click()
    _wait(driver, lambda d: d.find_element(By.ID, "rows").get_attribute("data-table") == table)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_the_console_shows_the_pipeline_metrics_rows_history_and_sql(served, browser):
    from selenium.webdriver.common.by import By

    server, url = served
    browser.get(f"{url}/ui")
    nodes = dict(_wait(browser, lambda d: _attributes(d, "#graph .node", "data-table",
                                                      "data-kind") or None))
    assert nodes == {"ratings": "source", "average": "eager", "counts": "lazy",
                     "counts_budgeted": "budgeted", "rated_before": "eager", "by_user": "sql",
                     "fragile": "eager"}
    edges = set(map(tuple, _attributes(browser, "#graph .edge", "data-from", "data-to",
                                       "class")))
    assert edges == {("ratings", t, "edge parent") for t in nodes if t != "ratings"} | {
        ("average", "rated_before", "edge lookup")}

    # the metrics table shows what /status and /tables say
    status, tables = _get(f"{url}/status"), _get(f"{url}/tables")
    header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#metrics th")]

    def with_rates(d) -> dict | None:  # once the page has two samples to take rates from
        shown = {r[0]: r for r in _cells(d, "#metrics tbody tr")}
        budgeted = shown.get("counts_budgeted")
        return shown if budgeted and budgeted[header.index("refreshes/s")] != "…" else None

    rows = _wait(browser, with_rates)
    assert set(rows) == set(status["tables"])
    for table in tables:
        line = dict(zip(header, rows[table["name"]], strict=True))
        m = status["tables"][table["name"]]
        assert line["kind"] == m["kind"]
        assert _number(line["rows"]) == table["rows"]
        assert _number(line["rejected"]) == m["rejected"]
        if m["kind"] == "feature":
            assert _number(line["stale keys"]) == m["stale_keys"]
            assert _number(line["pending appends"]) == m["pending_appends"]
    assert _number(rows["ratings"][header.index("rows")]) == 400  # the bad record is not in
    assert _number(rows["ratings"][header.index("rejected")]) == 1
    assert status["tables"]["counts"]["stale_keys"] == 12  # lazy: nothing refreshed yet
    assert _number(rows["counts"][header.index("stale keys")]) == 12
    budget_use = {name: row[header.index("budget use")] for name, row in rows.items()}
    assert budget_use.pop("counts_budgeted").endswith("%")  # refreshed / (ticks x budget)
    assert set(budget_use.values()) == {"—"}

    # live plots: a line per table, with points from the sampled history
    _wait(browser, lambda d: int(d.find_element(
        By.CSS_SELECTOR, '#plot-stale polyline[data-table="counts"]')
        .get_attribute("data-points")) >= 2)
    assert _attributes(browser, "#plot-ingested polyline", "data-table") == [["ratings"]]

    # rejected records list the bad one, with its reason
    rejected = _wait(browser, lambda d: _cells(d, "#rejected tbody tr") or None)
    assert len(rejected) == 1 and rejected[0][1] == "ratings" and "five stars" in rejected[0][4]

    assert _number(rows["fragile"][header.index("quarantined")]) == 1
    problems = _wait(browser, lambda d: d.find_element(By.ID, "problems").text or None)
    assert "fragile: quarantined keys — ValueError: user 5 breaks me" in problems

    # a table's quarantined keys; its stalest keys, read before its rows (a lazy table's
    # rows are refreshed when read)
    _open(browser, "fragile")
    quarantined = browser.find_element(By.ID, "quarantined").text
    assert quarantined.endswith("keys (held after repeated failures): 5")
    _open(browser, "counts")
    stalest = _cells(browser, "#stalest tbody tr")
    assert len(stalest) == 12 and sum(_number(r[1]) for r in stalest) == 400
    staleness = [_number(r[3]) for r in stalest]
    assert staleness == sorted(staleness, reverse=True)

    # clicking a table shows its rows, as the server has them
    _open(browser, "average")
    shown = _cells(browser, "#rows tbody tr")
    expected = server.bulk_query("average")
    assert len(shown) == len(expected) == 12
    first = expected.iloc[0]
    assert [_number(v) for v in shown[0]] == pytest.approx(
        [first.user, first.average, first.n], rel=1e-3)

    # clicking a row shows the key's history: a version per refresh that changed it
    browser.find_elements(By.CSS_SELECTOR, "#rows tbody tr")[0].click()
    versions = _wait(browser, lambda d: _cells(d, "#history tbody tr") or None)
    history = server.history("average", int(first.user))
    assert len(versions) == len(history) > 1
    columns = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#history th")]
    assert [_number(v[columns.index("_ralf_seq")]) for v in versions] == \
        history["_ralf_seq"].tolist()

    # SQL with results, and a bad query's message
    query = browser.find_element(By.ID, "sql-query")
    query.clear()
    query.send_keys("SELECT user, n FROM by_user ORDER BY user LIMIT 3")
    browser.find_element(By.ID, "sql-run").click()
    result = _wait(browser, lambda d: _cells(d, "#sql-result tbody tr") or None)
    assert result == [[str(u), str(n)] for u, n in
                      server.sql("SELECT user, n FROM by_user ORDER BY user LIMIT 3")
                      .itertuples(index=False)]
    query.clear()
    query.send_keys("SELECT nope FROM nowhere")
    browser.find_element(By.ID, "sql-run").click()
    message = _wait(browser, lambda d: d.find_element(By.ID, "sql-error").text or None)
    assert message.startswith("QueryError") and "nowhere" in message
    assert _cells(browser, "#sql-result tbody tr") == []


def test_with_a_token_the_page_loads_and_asks_for_it(browser):
    from selenium.webdriver.common.by import By

    with Ralf() as server:
        _build(server)
        with pytest.raises(RalfError):
            server.run()  # (the rejected record)
        url = server.serve(port=0, token="s3cret")

        browser.get(f"{url}/ui")  # the page itself carries no data: served without a token
        alert = _wait(browser, lambda d: d.find_element(By.ID, "alert").text or None)
        assert "bearer token" in alert
        assert _cells(browser, "#metrics tbody tr") == []
        box = browser.find_element(By.ID, "token")
        box.send_keys("s3cret\n")  # sent as Authorization: Bearer from then on
        rows = _wait(browser, lambda d: _cells(d, "#metrics tbody tr") or None)
        assert {r[0] for r in rows} == {"ratings", "average", "counts", "counts_budgeted",
                                        "rated_before", "by_user", "fragile"}
        assert not browser.find_element(By.ID, "alert").is_displayed()
        answer = urllib3.request("GET", f"{url}/ui/api/graph")
        assert answer.status == 401  # the data routes still want the token


def test_history_samples_are_bounded_and_filtered_by_time(served):
    server, url = served
    history = console.MetricsHistory(server, size=3)
    for _ in range(5):
        history.sample()
    assert len(history.samples) == 3
    times = [s["t"] for s in history.samples]
    assert times == sorted(times)
    served_samples = _get(f"{url}/status/history")["samples"]
    assert served_samples and set(served_samples[-1]["tables"]) == set(server.metrics()["tables"])
    newest = served_samples[-1]["t"]
    assert all(s["t"] > newest for s in _get(f"{url}/status/history?since={newest}")["samples"])


def test_rows_page_and_key_history_routes(served):
    server, url = served
    page = _get(f"{url}/ui/api/rows/average?offset=10&limit=5")
    assert page["total"] == 12 and [r["user"] for r in page["rows"]] == \
        server.bulk_query("average")["user"].tolist()[10:]
    answer = urllib3.request("GET", f"{url}/ui/api/rows/average?limit=100000")
    assert answer.status == 400
    answer = urllib3.request("GET", f"{url}/ui/api/rows/nowhere")
    assert answer.status == 404 and json.loads(answer.data)["error"] == "TableNotFound"
    versions = _get(f"{url}/ui/api/history/ratings/3?limit=2")
    assert [v["_ralf_seq"] for v in versions] == \
        server.history("ratings", 3)["_ralf_seq"].tolist()[:2]
    answer = urllib3.request("GET", f"{url}/ui/api/history/average/notanumber")
    assert answer.status == 400 and json.loads(answer.data)["error"] == "SchemaError"
    assert urllib3.request("GET", f"{url}/ui/static/../app.py").status == 404
    keys = _get(f"{url}/ui/api/keys/fragile")
    assert keys["quarantined"] == [5] and [k["key"] for k in keys["stalest"]] == [5]
    assert urllib3.request("GET", f"{url}/ui/api/keys/fragile?limit=-1").status == 400

"""The screenshots of docs/console.md: a live demo pipeline served on 127.0.0.1, its
console opened in headless Chromium after ``--seconds`` of traffic (so the plots have
minutes to show), a table and a key clicked, a SQL query run.

    python -m tools.screenshots [--seconds 90] [--out docs]

Needs Debian's chromium and chromium-driver and selenium (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from ralf import Operator, Ralf, Record, Schema, SourceOperator
from tests.pipelines import AVERAGE, RATINGS, AverageRating
from tests.services import chromium

MOVIES = Schema("movie", {"movie": int, "title": str})
TITLED = Schema("user", {"user": int, "last_title": str})


class Traffic(SourceOperator):
    """Ratings arriving at a varying rate, one malformed now and then, until stopped."""

    def __init__(self, schema: Schema, stop: threading.Event) -> None:
        self.schema, self.stop, self.rng, self.started = schema, stop, random.Random(7), None

    def next(self) -> list[dict] | None:
        if self.stop.is_set():
            return None
        self.started = self.started or time.monotonic()
        burst = 40 + int(30 * abs(((time.monotonic() - self.started) / 20) % 2 - 1))
        time.sleep(0.05)  # a paced stream, not a flood
        rows = [{"user": self.rng.randint(1, 300), "movie": self.rng.randint(1, 50),
                 "rating": float(self.rng.randint(1, 5))} for _ in range(burst)]
        if self.rng.random() < 0.02:
            rows.append({"user": 1, "movie": 1, "rating": "five stars"})
        return rows


class Catalog(SourceOperator):
    """The movie titles, once."""

    def __init__(self, schema: Schema) -> None:
        self.schema, self.done = schema, False

    def next(self) -> list[dict] | None:
        if self.done:
            return None
        self.done = True
        return [{"movie": m, "title": f"Movie {m}"} for m in range(1, 51)]


class LastTitle(Operator):
    """The title of the movie a user rated last (a lookup join)."""

    def on_record(self, record: Record, movie: Record | None) -> Record:
        return Record(user=record.user, last_title=movie.title if movie else "?")


def main() -> None:
    """Run the demo for ``--seconds``, then save console.png and console-table.png."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    stop = threading.Event()
    with Ralf() as server:
        movies = server.create_source(Catalog, args=(MOVIES,), name="movies")
        ratings = server.create_source(Traffic, args=(RATINGS, stop), name="ratings")
        ratings.map(AverageRating, args=(AVERAGE,), name="average")
        ratings.map(AverageRating, args=(AVERAGE,), name="average_budgeted", budget=20)
        ratings.join(movies, LastTitle, args=(TITLED,), on="movie", name="last_title",
                     lazy=True)
        ratings.aggregate(by="user", name="by_user", n=("*", "count"),
                          top=("rating", "max"))
        server.start(interval=0.1)
        url = server.serve(port=0)
        print(f"demo at {url}/ui; taking screenshots after {args.seconds:.0f} s", flush=True)
        time.sleep(args.seconds)  # the traffic the plots show
        with chromium() as browser:
            browser.set_window_size(1400, 1500)
            browser.get(f"{url}/ui")
            wait = WebDriverWait(browser, 30)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#metrics tbody tr"))
            browser.find_element(
                By.CSS_SELECTOR, '#graph .node[data-table="average_budgeted"]').click()
            wait.until(lambda d: d.find_element(By.ID, "rows").get_attribute("data-table"))
            browser.find_elements(By.CSS_SELECTOR, "#rows tbody tr")[2].click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#history tbody tr"))
            query = browser.find_element(By.ID, "sql-query")
            query.clear()
            query.send_keys("SELECT user, n, top FROM by_user "
                            "ORDER BY n DESC LIMIT 8")
            browser.find_element(By.ID, "sql-run").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sql-result tbody tr"))
            out = Path(args.out)
            browser.save_screenshot(str(out / "console.png"))
            browser.set_window_size(1400, 2400)  # the whole section in view
            section = browser.find_elements(By.CSS_SELECTOR, "main > section")[3]
            browser.execute_script("arguments[0].scrollIntoView()", section)
            section.screenshot(str(out / "console-table.png"))
        stop.set()
    print(f"saved {out / 'console.png'} and {out / 'console-table.png'}")


if __name__ == "__main__":
    main()

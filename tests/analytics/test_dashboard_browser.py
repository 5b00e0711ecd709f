"""The dashboard in a real browser: headless Chromium (Debian's package) against `iot-platform serve`.

Chromium dumps the DOM after a virtual-time budget; the page's script marks each canvas with
data-rendered / data-points (and the error-rate chart data-ticks) after Chart.js has drawn it, and
tables carry data-table / data-row.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC
from html.parser import HTMLParser
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ingest_service.core.database import DatabaseTarget
from tests.analytics.conftest import API_KEY, NO_MANIFEST, AnalyticsDb
from tests.utils.processes import running_api

SECRET = "browser-test-provision-secret-0123456789"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="needs Debian's headless Chromium: `apt-get install -y chromium` (.ci/run installs it)",
    ),
]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,2200",
]


@pytest.fixture(scope="module")
def server(analytics_db: AnalyticsDb) -> Iterator[str]:
    """A real `iot-platform serve` process on a free port, with the analytics key configured."""
    with running_api(
        analytics_db.target, SECRET, ANALYTICS_API_KEY=API_KEY, DBT_MANIFEST_PATH=str(analytics_db.manifest)
    ) as base:
        yield base


def dump_dom(url: str, profile: Path, budget_ms: int = 8000) -> str:
    assert CHROMIUM is not None
    result = subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Dom(HTMLParser):
    """Just enough of the DOM: elements with their attributes and, for table cells, their text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        if tag == "table":
            self._table = attributes.get("data-table", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None and "data-row" in attributes:
            self.tables[self._table].append([])
        elif tag == "td" and self._table is not None and self.tables[self._table]:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def first(self, tag: str, **attrs: str) -> dict[str, str]:
        for name, attributes in self.elements:
            if name == tag and all(attributes.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                return attributes
        raise AssertionError(f"no <{tag} {attrs}> in the page")


def test_dashboard_renders_charts_and_tables_with_data(server: str, analytics_db: AnalyticsDb, tmp_path: Path) -> None:
    html = dump_dom(f"{server}/dashboard?key={API_KEY}&refresh=3", tmp_path / "profile", budget_ms=10000)
    dom = Dom(html)
    catalog = analytics_db.catalog

    def one(query: str, *models: str) -> list[tuple]:
        with psycopg.connect(analytics_db.target.url) as conn:
            return conn.execute(sql.SQL(query).format(*(catalog.relation(m) for m in models))).fetchall()

    body = dom.first("body")
    assert body["data-state"] == "ready", body
    assert int(body["data-refreshes"]) >= 2  # it checked for a new build on its own...
    assert body["data-loads"] == "1"  # ...and, there being none, did not reload the same data
    # "data as of <the last build>", not "refreshes every ..."
    ((built_at,),) = one("select built_at from {}", "analytics_build")
    status = re.search(r'<div id="status"[^>]*>([^<]*)</div>', html)
    assert status is not None
    assert status.group(1) == f"data as of {built_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC (last dbt build)"
    assert "refreshes every" not in html

    for chart in ("chart-format-share", "chart-device-states", "chart-error-rate"):
        canvas = dom.first("canvas", id=chart)
        assert canvas.get("data-rendered") == "true", (chart, canvas)
        assert int(canvas["data-points"]) > 0
    errors = dom.first("canvas", id="chart-error-rate")
    assert int(errors["data-points"]) >= 10 and errors["data-ticks"] == errors["data-points"]  # every bar labelled

    counts = dict(one("select source_type, reading_count from {}", "metric_counts_by_format"))
    ((switches,),) = one("select count(*) from {}", "metric_side_switches")
    reasons = {r for (r,) in one("select distinct reason from {}", "fct_ingest_error_rate_daily")}

    # The default metric table: counts by format, as the model has them.
    rows = dom.tables["metric_counts_by_format"]
    assert {r[0]: int(r[2].replace(",", "")) for r in rows} == counts

    # Every example with its SQL and its result rows.
    for name in (
        "counts_by_type",
        "devices_both_formats",
        "unified_recent",
        "averages_compared",
        "side_switches",
        "side_switches_last_hour",
    ):
        dom.first("article", data_example=name)
        assert dom.tables[f"example:{name}"], name
    assert len(dom.tables["example:side_switches"]) == switches

    # Error rate by reason, one row per reason and format.
    assert {r[0] for r in dom.tables["error_rate_by_reason"]} == reasons

    if shot := os.environ.get("DASHBOARD_SCREENSHOT"):  # for docs/analytics.md: a picture of this page
        subprocess.run(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'shot'}",
                "--virtual-time-budget=10000",
                f"--screenshot={Path(shot).resolve()}",
                f"{server}/dashboard?key={API_KEY}&refresh=0",
            ],
            capture_output=True,
            timeout=90,
            check=True,
        )


def test_dashboard_asks_for_the_key(server: str, tmp_path: Path) -> None:
    dom = Dom(dump_dom(f"{server}/dashboard?refresh=0", tmp_path / "profile", budget_ms=4000))
    assert dom.first("body")["data-state"] == "needs-key"
    assert "hidden" not in dom.first("form", id="key-form")
    assert not any(rows for rows in dom.tables.values())


def test_dashboard_says_not_built_yet_and_when(fresh_db: DatabaseTarget, tmp_path: Path) -> None:
    """Before the first dbt build: one notice with the time the first build is due, no empty charts."""
    with running_api(
        fresh_db,
        SECRET,
        ANALYTICS_API_KEY=API_KEY,
        DBT_MANIFEST_PATH=str(NO_MANIFEST),
        ANALYTICS_FIRST_BUILD_AT="2031-05-06T07:08:09Z",
    ) as base:
        html = dump_dom(f"{base}/dashboard?key={API_KEY}&refresh=0", tmp_path / "profile", budget_ms=4000)
    dom = Dom(html)
    assert dom.first("body")["data-state"] == "not-built"
    assert "hidden" not in dom.first("p", id="notice") and "hidden" in dom.first("main")
    notice = re.search(r'<p id="notice"[^>]*><strong>([^<]*)</strong>', html)
    assert notice is not None and notice.group(1) == (
        "The analytics models are not built yet, first build at 2031-05-06 07:08:09 UTC"
    )

"""A data engineer exposes a new mart by SQL + YAML alone: after `dbt build`, a running API serves it
as `GET /analytics/<model>` with its YAML's columns, types, key, time column and filters, without a
restart and without a Python change. The mart is added to a copy of the dbt project."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from tests.analytics.conftest import API_KEY, DBT_PROJECT, AnalyticsDb, run_dbt
from tests.utils.processes import running_api

pytestmark = pytest.mark.slow
SECRET = "new-mart-test-provision-secret-0123456789"
MART = "mart_device_extension_days"

SQL = """\
-- Per device and UTC day: platform extension readings, their mean in mm, and whether any was calibrated.
select
    device_id,
    (observed_at at time zone 'UTC')::date as reading_day,
    source_format::varchar as source_format,
    count(*)::integer as readings,
    avg(extension_mm)::numeric(12, 3) as avg_mm,
    bool_or(is_calibrated) as any_calibrated,
    max(observed_at) as last_observed_at
from {{ ref('v_platform_extension_mm') }}
group by device_id, reading_day, source_format
"""

YAML = """\
models:
  - name: mart_device_extension_days
    description: Per device, UTC day and format, platform extension readings and their mean in mm.
    config:
      meta:
        analytics:
          title: Extension per device and day
          key: [device_id, source_format]
          time_column: reading_day
          default_order: desc
          filters: [source_format, any_calibrated]
    columns:
      - {name: device_id, data_type: bigint}
      - {name: reading_day, data_type: date}
      - {name: source_format, data_type: varchar}
      - {name: readings, data_type: integer}
      - {name: avg_mm, data_type: "numeric(12,3)"}
      - {name: any_calibrated, data_type: boolean}
      - {name: last_observed_at, data_type: timestamptz}
"""


@pytest.fixture
def project(tmp_path: Path, analytics_db: AnalyticsDb) -> Iterator[Path]:
    """A copy of dbt_project/ with the new mart; the built relation is dropped afterwards, so the
    package's shared database stays as the other tests expect it."""
    copy = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT, copy, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    (copy / "models" / "marts" / f"{MART}.sql").write_text(SQL)
    (copy / "models" / "marts" / f"{MART}.yml").write_text(YAML)
    yield copy
    schema = analytics_db.catalog.metrics["metric_side_switches"].schema  # where dbt builds the marts
    with psycopg.connect(analytics_db.target.url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(schema, MART)))


def wait_for(http: httpx.Client, path: str, status: int, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(path)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_a_mart_added_as_sql_and_yaml_is_served_after_dbt_build(
    project: Path, analytics_db: AnalyticsDb, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    manifest = work / "target" / "manifest.json"
    with (
        running_api(analytics_db.target, SECRET, ANALYTICS_API_KEY=API_KEY, DBT_MANIFEST_PATH=str(manifest)) as base,
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as http,
    ):
        # No manifest on this host yet: the API is up and says so.
        before = http.get(f"/analytics/{MART}")
        assert before.status_code == 503 and before.json()["reason"] == "analytics_not_built"

        result = run_dbt(analytics_db.target, work, "build", "--select", MART, project=project)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

        response = wait_for(http, f"/analytics/{MART}?limit=1000", 200)  # the manifest is re-read within 1 s
        assert response.status_code == 200, response.text
        body = response.json()
        served = next(m for m in http.get("/analytics/").json()["metrics"] if m["name"] == MART)
        assert served == {
            "name": MART,
            "title": "Extension per device and day",
            "description": "Per device, UTC day and format, platform extension readings and their mean in mm.",
            "path": f"/analytics/{MART}",
            "columns": [
                "device_id",
                "reading_day",
                "source_format",
                "readings",
                "avg_mm",
                "any_calibrated",
                "last_observed_at",
            ],
            "time_column": "reading_day",
            "device_filter": True,
            "filters": ["source_format", "any_calibrated"],
        }

        with psycopg.connect(analytics_db.target.url) as conn:
            schema = body["relation"].split(".")[0]
            query = sql.SQL("select * from {} order by reading_day desc, device_id desc, source_format desc")
            expected = conn.cursor(row_factory=dict_row).execute(query.format(sql.Identifier(schema, MART))).fetchall()
        assert expected and body["relation"] == f"{schema}.{MART}"
        rows = body["rows"]
        assert [(r["device_id"], r["reading_day"], r["source_format"]) for r in rows] == [
            (e["device_id"], e["reading_day"].isoformat(), e["source_format"]) for e in expected
        ]  # newest day first (default_order: desc), then the key
        for row, want in zip(rows, expected, strict=True):  # JSON types from the YAML's data_type
            assert row["readings"] == want["readings"] and isinstance(row["readings"], int)
            assert row["avg_mm"] == pytest.approx(float(want["avg_mm"])) and isinstance(row["avg_mm"], float)
            assert row["any_calibrated"] is want["any_calibrated"]
            assert row["last_observed_at"].replace("Z", "+00:00") == want["last_observed_at"].isoformat()

        # Its filters, typed like its columns.
        # The newest day device 4 read in the new format (the events span midnight at some hours).
        day = max(e["reading_day"] for e in expected if e["device_id"] == 4 and e["source_format"] == "new").isoformat()
        only = http.get(f"/analytics/{MART}", params={"from": day, "device_id": 4, "source_format": "new"}).json()
        assert only["rows"] and all(
            (r["device_id"], r["reading_day"], r["source_format"]) == (4, day, "new") for r in only["rows"]
        )
        assert http.get(f"/analytics/{MART}", params={"any_calibrated": "false"}).json()["rows"]
        for bad in ({"any_calibrated": "maybe"}, {"from": "2026-01-01T10:00:00"}, {"source_format": "\x00"}):
            assert http.get(f"/analytics/{MART}", params=bad).status_code == 422, bad

        # And it is documented like every other model route.
        operation = http.get("/openapi.json").json()["paths"][f"/analytics/{MART}"]["get"]
        assert {p["name"] for p in operation["parameters"]} == {
            "limit",
            "offset",
            "device_id",
            "from",
            "to",
            "order",
            "source_format",
            "any_calibrated",
        }

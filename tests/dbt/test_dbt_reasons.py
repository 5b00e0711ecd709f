"""Reasons have one home: the code's `Reason` enumeration, the migrated reason table, and dbt's test.

One request of each kind of bad input goes through the real API, then `iot-platform dbt build`
(as the README runs it) must end with WARN=0 ERROR=0: every reason the API stores is a row of
`ingest.ingest_error_reason`, which dbt tests `ingest_error.reason` against.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget
from ingest_service.ingest.reasons import Reason
from tests.utils.events import startup, telemetry, token
from tests.utils.processes import PROJECT_ROOT

SECRET = "reasons-test-secret"
JSON = {"content-type": "application/json"}
PROVISIONED_NEVER = 2**31 + 999_999


def _bad_inputs(client: TestClient) -> dict[Reason, Any]:
    """One request per reason bad input can earn; returns reason -> the response holding it."""

    def one(**request: Any) -> dict[str, Any]:
        answer = client.post("/ingest", **request)
        assert answer.status_code < 500, answer.text
        body = answer.json()
        return body[0] if isinstance(body, list) else body

    now = time.time()
    answers: dict[Reason, Any] = {
        Reason.INVALID_JSON: one(content=b"not json", headers=JSON),
        Reason.EMPTY_BODY: one(content=b"", headers=JSON),
        Reason.EMPTY_BATCH: one(json=[]),
        Reason.NOT_AN_OBJECT: one(json=5),
        Reason.MISSING_FIELD: one(json={"device_id": 7}),
        Reason.WRONG_TYPE: one(json=telemetry(7, value="high")),
        Reason.UNKNOWN_EVENT_TYPE: one(json=telemetry(7, event_type="platform_tilt_deg")),
        Reason.VALUE_OUT_OF_RANGE: one(json=telemetry(7, value=151)),
        Reason.INVALID_TIMESTAMP: one(
            content=b'{"device_id": 7, "event_type": "platform_extension_mm", "value": 1, "timestamp": 1e400}',
            headers=JSON,
        ),
        Reason.TIMESTAMP_TOO_OLD: one(json=telemetry(7, timestamp=100)),
        Reason.TIMESTAMP_IN_FUTURE: one(json=telemetry(7, timestamp=now + 3600)),
        Reason.DEVICE_ID_OUT_OF_RANGE: one(json=telemetry(0)),
        Reason.UNKNOWN_DEVICE: one(json=telemetry(PROVISIONED_NEVER)),
        Reason.INVALID_SERIAL: one(json=startup(SECRET, serial="bad serial!")),
        Reason.INVALID_TOKEN: one(json={**startup(SECRET, serial="SN-TOKEN"), "provision_token": "0" * 64}),
        Reason.STALE_STARTUP: one(json=startup(SECRET, serial="SN-STALE", timestamp=now - 3 * 86_400)),
    }
    # serial_conflict: SN-A is provisioned, then a legacy device claims it.
    assert one(json=startup(SECRET, serial="SN-A"))["status"] == "provisioned"
    answers[Reason.SERIAL_CONFLICT] = one(json=startup(SECRET, serial="SN-A", device_id=5))
    # device_conflict: legacy device 6 upgrades as SN-B, then starts up as SN-C.
    assert one(json=startup(SECRET, serial="SN-B", device_id=6))["status"] == "provisioned"
    answers[Reason.DEVICE_CONFLICT] = one(json=startup(SECRET, serial="SN-C", device_id=6))
    # too_many_failed_startups: the limiter's allowance of failures for one serial, then one more.
    wrong = {"provision_token": token("not-the-secret", "SN-LIMIT")}
    for _ in range(Settings(dev_mode=True).failed_startups_per_serial):
        assert one(json={**startup(SECRET, serial="SN-LIMIT"), **wrong})["reason"] == Reason.INVALID_TOKEN
    answers[Reason.TOO_MANY_FAILED_STARTUPS] = one(json={**startup(SECRET, serial="SN-LIMIT"), **wrong})
    return answers


def test_migrations_write_one_reason_row_per_enumeration_member(fresh_db: DatabaseTarget) -> None:
    with psycopg.connect(fresh_db.url) as conn:
        rows = dict(conn.execute("select reason, description from ingest.ingest_error_reason").fetchall())
    assert rows == {str(reason): reason.description for reason in Reason}


@pytest.mark.slow
def test_each_bad_input_reason_is_stored_and_dbt_build_passes(fresh_db: DatabaseTarget, tmp_path) -> None:
    from ingest_service.main import create_app

    settings = Settings(dev_mode=True, database_url=fresh_db.url, provision_secret=SECRET)
    with TestClient(create_app(settings)) as client:
        answers = _bad_inputs(client)
    # Every reason but the write path's own failure, which bad input must never reach.
    # internal_error never comes from bad input; topic_mismatch comes only over MQTT (tests/mqtt).
    assert set(answers) == set(Reason) - {Reason.INTERNAL_ERROR, Reason.TOPIC_MISMATCH}
    assert {reason: answer["reason"] for reason, answer in answers.items()} == {r: str(r) for r in answers}
    with psycopg.connect(fresh_db.url) as conn:
        stored = {reason for (reason,) in conn.execute("select distinct reason from ingest.ingest_error")}
    assert stored == {str(reason) for reason in answers}

    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "DBT_"))}
    env["DATABASE_URL"] = fresh_db.url
    result = subprocess.run(
        [str(PROJECT_ROOT / ".venv" / "bin" / "iot-platform"), "dbt", "build", "--target-path", str(tmp_path)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    done = re.findall(r"Done\. PASS=\d+ WARN=(\d+) ERROR=(\d+)", result.stdout)
    assert result.returncode == 0 and done == [("0", "0")], result.stdout[-6000:]


@pytest.mark.slow
def test_an_unknown_reason_fails_the_relationship_test(fresh_db: DatabaseTarget, tmp_path) -> None:
    """The check is real: a reason the table lacks is reported by dbt (as a warning, so it never
    stops the metrics)."""
    from tests.dbt.helpers import insert_raw, run_dbt

    with psycopg.connect(fresh_db.url) as conn:
        raw_id = insert_raw(conn, {"device_id": 1})
        conn.execute(
            "insert into ingest.ingest_error (raw_record_id, reason, detail) values (%s, 'made_up_reason', 'x')",
            (raw_id,),
        )
    models = ["stg_ingest__ingest_errors", "stg_ingest__ingest_error_reasons"]
    # The ledger accounting spans more models than these (it has its own tests): left out here.
    only = ["build", "--select", *models, "--exclude", "assert_each_raw_record_has_exactly_one_outcome"]
    result = run_dbt(fresh_db, only, tmp_path, check=False)
    assert result.returncode == 0 and re.search(r"Done\. PASS=\d+ WARN=1 ERROR=0", result.stdout), result.stdout[-4000:]
    warned = re.findall(r"WARN \d+ (\w+) ", result.stdout)
    assert warned == ["relationships_stg_ingest__ingest_errors_reason__reason__ref_stg_ingest__ingest_error_reasons_"]

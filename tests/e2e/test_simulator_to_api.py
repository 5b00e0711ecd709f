"""publisher.simulate into a running API: brand-new devices start up, get their id, then report under it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psycopg
import pytest

from ingest_service.core.database import DatabaseTarget
from tests.utils.ledger import ledger
from tests.utils.processes import PROJECT_ROOT, running_api

SECRET = "e2e-provision-secret-of-32-bytes-or-more"
COUNT = 4000
PROVISIONED = 3


@pytest.mark.slow
def test_provisioned_devices_report_telemetry_under_their_assigned_id(fresh_db: DatabaseTarget) -> None:
    start = time.time() - 3600  # within the startup replay window, and never in the future
    env = {**os.environ, "PROVISION_SECRET": SECRET}
    options = [
        "--devices", "10", "--provisioned-devices", str(PROVISIONED), "--new-firmware-share", "0.3",
        "--count", str(COUNT), "--rate", "0", "--seed", "21", "--start-time", str(start),
        "--batch", "200", "--linger-ms", "20", "--summary-json",
    ]  # fmt: skip
    with running_api(fresh_db, SECRET) as url, psycopg.connect(fresh_db.url) as conn:
        done = subprocess.run(
            [sys.executable, "-m", "publisher.simulate", "--url", url + "/ingest", *options],
            cwd=PROJECT_ROOT, env=env, capture_output=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        summary = json.loads(done.stdout)

        devices = conn.execute(
            """select d.id, d.serial, d.origin from ingest.device d
               join ingest.device_startup s on s.device_id = d.id where d.serial like 'SN-P%' order by d.serial"""
        ).fetchall()
        assert [serial for _, serial, _ in devices] == [f"SN-P{i:06d}" for i in range(1, PROVISIONED + 1)]
        assert all(origin == "provisioned" and device_id >= 2**31 for device_id, _, origin in devices)
        ids = [device_id for device_id, _, _ in devices]

        # Each brand-new device reported facts under the id the API assigned, extension in mm only.
        facts = conn.execute(
            """select p.device_id, t.payload_format, count(*) from ingest.processed_record p
               join ingest.record_type t on t.id = p.record_type_id
               where p.device_id = any(%s) group by 1, 2""",
            [ids],
        ).fetchall()
        assert {device_id for device_id, _, _ in facts} == set(ids)
        assert {payload_format for _, payload_format, _ in facts} == {"new", "common"}
        assert all(n > 10 for _, _, n in facts)
        # No telemetry was sent for an id the API had not assigned.
        strays = conn.execute("select count(*) from ingest.ingest_error where device_id >= %s", [2**31]).fetchone()
        assert strays == (0,)

        # Every event sent is in the ledger once with one outcome, as the simulator was told.
        counts = ledger(conn)
        assert summary["sent"] == COUNT and summary["undelivered"] == 0
        assert counts.raw_rows == COUNT and counts.balanced
        assert summary["accepted"] == counts.facts + counts.duplicates + counts.startups
        assert summary["rejected"] == counts.errors

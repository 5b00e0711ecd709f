"""The simulator piped through pipe_to_api into a running API, reconciled against the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psycopg
import pytest

from ingest_service.core.database import DatabaseTarget
from tests.utils.processes import PROJECT_ROOT, running_api

SECRET = "e2e-provision-secret-of-32-bytes-or-more"
COUNT = 3000


def publish(url: str, start_time: float) -> tuple[dict, int]:
    """Run generator | pipe_to_api once; returns pipe_to_api's summary and the number of lines sent."""
    env = {**os.environ, "PROVISION_SECRET": SECRET}
    generator_cmd = [
        sys.executable, "-m", "publisher.iot_device_message_generator",
        "--seed", "11", "--start-time", str(start_time), "--count", str(COUNT), "--rate", "0",
        "--devices", "20", "--new-firmware-share", "0.3", "--upgrade-rate", "0.01",
    ]  # fmt: skip
    lines = subprocess.run(generator_cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, check=True).stdout
    pipe = subprocess.run(
        [sys.executable, "-m", "publisher.pipe_to_api", "--url", url + "/ingest", "--batch", "250", "--summary-json"],
        cwd=PROJECT_ROOT, env=env, input=lines, capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    summary = json.loads(pipe.stdout.decode().strip().splitlines()[-1])
    return summary, len(lines.splitlines())


def ledger(conn: psycopg.Connection) -> dict[str, int]:
    row = conn.execute(
        """
        select (select count(*) from ingest.raw_record),
               (select count(*) from ingest.processed_record),
               (select count(*) from ingest.raw_duplicate),
               (select count(*) from ingest.device_startup),
               (select count(*) from ingest.ingest_error),
               (select count(*) from ingest.raw_record r
                 where (select count(*) from ingest.processed_record p where p.raw_record_id = r.id)
                     + (select count(*) from ingest.raw_duplicate d where d.raw_record_id = r.id)
                     + (select count(*) from ingest.device_startup s where s.raw_record_id = r.id)
                     + (select count(*) from ingest.ingest_error e where e.raw_record_id = r.id) <> 1)
        """
    ).fetchone()
    assert row is not None
    return dict(zip(["raw", "facts", "duplicates", "startups", "errors", "without_one_outcome"], row, strict=True))


@pytest.mark.slow
def test_generator_through_pipe_into_api_reconciles(fresh_db: DatabaseTarget) -> None:
    start = time.time() - 3600
    with running_api(fresh_db, SECRET) as url, psycopg.connect(fresh_db.url) as conn:
        summary, sent = publish(url, start)
        first = ledger(conn)
        assert sent == COUNT
        assert summary["sent"] == COUNT and summary["undelivered"] == 0
        # every event sent is in the ledger exactly once, with exactly one outcome
        assert first["raw"] == COUNT
        assert first["without_one_outcome"] == 0
        assert first["facts"] + first["duplicates"] + first["startups"] + first["errors"] == COUNT
        assert summary["accepted"] == first["facts"] + first["duplicates"] + first["startups"]
        assert summary["rejected"] == first["errors"]
        assert first["startups"] > 0  # the rollout upgraded devices with signed startups
        # ~10% malformed on purpose
        assert 0.05 * COUNT < first["errors"] < 0.15 * COUNT

        # The same stream again (a re-run of the publisher): a new ledger row per delivery, no new facts.
        publish(url, start)
        second = ledger(conn)
        assert second["raw"] == 2 * COUNT
        assert second["facts"] == first["facts"]
        assert second["duplicates"] == first["duplicates"] + first["facts"] + first["duplicates"]
        assert second["without_one_outcome"] == 0
        both_formats = conn.execute(
            """select count(*) from (
                 select device_id from ingest.processed_record p join ingest.record_type t on t.id = p.record_type_id
                 where t.measure = 'platform_extension' group by device_id
                 having count(distinct t.payload_format) = 2) d"""
        ).fetchone()
        assert both_formats is not None and both_formats[0] > 0  # upgraded devices kept their ids

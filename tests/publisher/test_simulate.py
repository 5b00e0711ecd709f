"""publisher.simulate against a real local HTTP server that answers like the ingest API."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from publisher.events import BATTERY, HEIGHT, MM, STARTUP
from tests.publisher.fake_api import running_api

REPO = Path(__file__).resolve().parents[2]
SIMULATE = [sys.executable, "-m", "publisher.simulate"]


def test_provisioned_devices_report_under_the_id_the_api_assigned() -> None:
    args = ["--devices", "5", "--provisioned-devices", "3", "--count", "3000", "--rate", "0", "--seed", "5"]
    args += ["--start-time", "1700000000", "--batch", "100", "--linger-ms", "20", "--summary-json"]
    with running_api() as api:
        done = subprocess.run([*SIMULATE, "--url", api.url, *args], cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["sent"] == 3000 and summary["undelivered"] == 0
    events = [json.loads(item) for item in api.stored]
    assert len(events) == 3000

    startups = events[:3]
    assert [e["serial"] for e in startups] == ["SN-P000001", "SN-P000002", "SN-P000003"]
    assert all(e["event_type"] == STARTUP and "device_id" not in e for e in startups)
    assigned = set(api.provisioned.values())
    assert len(assigned) == 3 and min(assigned) >= 2**31
    for device_id in assigned:
        own = [(i, e) for i, e in enumerate(events) if e.get("device_id") == device_id]
        # Not before the answer to the first batch (lines 1-100) came back.
        assert own and own[0][0] >= 100
        reported = {e["event_type"] for _, e in own if "value" in e and "timestamp" in e}
        assert reported <= {MM, BATTERY, HEIGHT} and MM in reported
    assert b"3 of 3 provisioned devices got their id" in done.stderr


def test_sigterm_stops_generating_and_delivers_what_was_generated() -> None:
    args = ["--devices", "5", "--rate", "400", "--batch", "50", "--linger-ms", "50", "--summary-json"]
    with running_api() as api:
        proc = subprocess.Popen(
            [*SIMULATE, "--url", api.url, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 30
        while len(api.stored) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["undelivered"] == 0
    assert summary["sent"] == len(api.stored) >= 200
    assert summary["accepted"] + summary["rejected"] == summary["sent"]

"""With several uvicorn workers, /metrics sums all of them, whichever worker answers."""

from __future__ import annotations

import re

import httpx
import pytest

from ingest_service.core.database import DatabaseTarget
from tests.utils.events import telemetry
from tests.utils.processes import running_api


def ok_items(text: str) -> float:
    match = re.search(r'^ingest_items_total\{reason="",status="ok"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.slow
def test_metrics_sum_over_workers(fresh_db: DatabaseTarget) -> None:
    with (
        running_api(fresh_db, "workers-test-secret-of-32-bytes-or-more", workers=2) as url,
        httpx.Client(base_url=url) as client,
    ):
        for i in range(40):  # new connections spread over both workers
            with httpx.Client(base_url=url) as one_shot:
                assert one_shot.post("/ingest", json=telemetry(device_id=i + 1, value=i)).status_code == 200
        scrapes = {ok_items(httpx.get(url + "/metrics").text) for _ in range(6)}
        assert scrapes == {40.0}
        assert client.get("/readyz").status_code == 200

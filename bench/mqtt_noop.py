"""The MQTT door's own ceiling: the bridge (`ingest_service.mqtt.bridge.Bridge`, the same client,
session, window, ordered acks and result publishes) with a door that stores nothing. Prints one JSON
line when it has answered `--count` messages: when the first and the last arrived.

    MQTT_URL=... MQTT_CLIENT_ID=... MQTT_TOPIC_PREFIX=... python -m bench.mqtt_noop --count 50000
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

import orjson

from ingest_service.core.config import Settings
from ingest_service.mqtt.bridge import Bridge
from ingest_service.mqtt.door import Reply
from ingest_service.mqtt.topics import Route

ANSWER = Reply(orjson.dumps({"raw_id": 0, "processed_id": 0, "status": "ok"}), stored=True)


class NoopDoor:
    """Answers every message at once, as if stored."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.first = 0.0

    async def handle(
        self, route: Route, topic: str, payload: bytes, content_type: str | None, correlation_data: bytes | None
    ) -> Reply:
        self.seen += 1
        if self.seen == 1:
            self.first = time.time()
            print(orjson.dumps({"first": self.first}).decode(), flush=True)
        if self.seen == self.count:
            print(orjson.dumps({"first": self.first, "last": time.time(), "count": self.count}).decode(), flush=True)
        return ANSWER


async def main(count: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Bridge(Settings(), NoopDoor(count)).run(stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    import uvloop

    from ingest_service.core.logging import configure_json_logging

    configure_json_logging(Settings().log_level)

    uvloop.run(main(parser.parse_args(sys.argv[1:]).count))

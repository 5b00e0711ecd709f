"""Batched load generator: C keep-alive connections each POST JSON arrays of B telemetry events as
fast as the API answers, for D seconds. A bare HTTP/1.1 client on asyncio streams (cheap on CPU).

Every event is unique (timestamp = base + seq * 10 us), so each one must become a new fact.
Prints one JSON line: requests, items, ok items, answers not of the --expect status (key non_200),
latency percentiles.

    python -m bench.batch_client --port 8000 --batch 1000 --clients 4 --duration 10 --base 1.7e9
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time

import orjson

TYPES = (
    (b"platform_extension_ticks", 0, 3000),
    (b"platform_extension_mm", -150, 150),
    (b"battery_charge", 0, 100),
    (b"platform_height_mm", 0, 200),
)


def make_body(seqs: range, base: float, devices: int) -> bytes:
    parts = []
    for seq in seqs:
        name, low, high = TYPES[seq % 4]
        value = low + seq % (high - low + 1)
        parts.append(
            b'{"device_id":%d,"event_type":"%s","value":%d,"timestamp":%.5f}'
            % (1 + seq % devices, name, value, base + seq * 0.00001)
        )
    return b"[" + b",".join(parts) + b"]"


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


async def _client(host: str, port: int, args: argparse.Namespace, counter: itertools.count, stats: dict) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    head = b"POST /ingest HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    deadline = stats["deadline"]
    while time.monotonic() < deadline:
        start_seq = next(counter) * args.batch
        body = make_body(range(start_seq, start_seq + args.batch), args.base, args.devices)
        started = time.perf_counter()
        writer.write(head % (host.encode(), len(body)) + body)
        status_line = await reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        answer = await reader.readexactly(length)
        stats["latencies"].append(time.perf_counter() - started)
        stats["requests"] += 1
        stats["items"] += args.batch
        stats["ok"] += answer.count(b'"status":"ok"')
        if status != args.expect:
            stats["non_200"] += 1
            stats["last_error"] = answer[:300].decode(errors="replace")
    writer.close()


async def run(args: argparse.Namespace) -> dict:
    counter = itertools.count()
    stats = {
        "requests": 0,
        "items": 0,
        "ok": 0,
        "non_200": 0,
        "latencies": [],
        "deadline": time.monotonic() + args.duration,
    }
    started = time.perf_counter()
    await asyncio.gather(*(_client(args.host, args.port, args, counter, stats) for _ in range(args.clients)))
    elapsed = time.perf_counter() - started
    lat = sorted(stats.pop("latencies"))
    stats.pop("deadline")
    stats.update(
        elapsed=elapsed,
        events_per_s=stats["items"] / elapsed,
        requests_per_s=stats["requests"] / elapsed,
        p50_ms=percentile(lat, 50) * 1000,
        p95_ms=percentile(lat, 95) * 1000,
        p99_ms=percentile(lat, 99) * 1000,
        max_ms=(lat[-1] * 1000) if lat else 0.0,
    )
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--base", type=float, required=True, help="timestamp of the first event (epoch s)")
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--expect", type=int, default=200, help="the status every answer should have (202: buffered)")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    stats = asyncio.run(run(args))
    sys.stdout.write(orjson.dumps(stats).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The data lifecycle commands: `partitions`, `archive`, `restore` (docs/lifecycle.md), `replay` (docs/replay.md).

The work is in ingest_service/lifecycle/; these parse, print, and with `--json` print one JSON
object for the Dagster lifecycle job, which runs them as it runs dbt (orchestration/defs/lifecycle/).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from platform_cli.database import database_settings


def _emit(as_json: bool, data: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        print(json.dumps(data))
    else:
        for line in lines:
            print(line)


json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON object (for the Dagster job)")


@click.command(
    help="create the missing day partitions from a week back to a week ahead (migrate does too) and count the "
    "rows in the default partitions"
)
@json_option
def partitions(as_json: bool) -> int:
    import psycopg

    from ingest_service.core.database import resolve_target
    from ingest_service.lifecycle import partitions as days

    settings = database_settings()
    first, last = days.window(settings.retention_days)
    with psycopg.connect(resolve_target(settings).url, autocommit=True) as conn:
        created = days.ensure(conn, first, last)
        defaults = days.default_partition_rows(conn)
        count = len(days.list_partitions(conn))
    data = {"window": [first.isoformat(), last.isoformat()], "created": created, "partitions": count}
    data["default_rows"] = defaults
    lines = [f"day partitions {first.isoformat()} .. {last.isoformat()}: {len(created)} created, {count} in all"]
    lines += [f"  {name}: {rows:,} rows (no day partition for them)" for name, rows in defaults.items() if rows]
    _emit(as_json, data, lines)
    return 0


@click.command(
    help="write the day partitions older than RETENTION_DAYS to Parquet under ARCHIVE_URL with a manifest, read "
    "them back to verify, then detach and drop them; with --verify DAY..., only check archived days' files"
)
@click.option("--verify", "verify_days", multiple=True, metavar="DAY", help="check this archived day (repeatable)")
@json_option
def archive(verify_days: tuple[str, ...], as_json: bool) -> int:
    from ingest_service.lifecycle import archive as archiving
    from ingest_service.lifecycle.commands import run_archive
    from ingest_service.lifecycle.partitions import parse_day

    settings = database_settings()
    url = settings.resolved_archive_url
    try:
        if verify_days:
            manifests = archiving.verify_archive(url, [parse_day(day) for day in verify_days])
            days = [m.day for m in manifests]
            _emit(
                as_json, {"archive_url": url, "verified": days}, [f"archive: {', '.join(days)} match their manifests"]
            )
            return 0
        if settings.retention_days is None:
            _emit(as_json, {"archive_url": url, "retention_days": None, "days": []}, [
                "archive: RETENTION_DAYS is unset, everything is kept"
            ])  # fmt: skip
            return 0
        from ingest_service.core.database import resolve_target

        results = run_archive(resolve_target(settings), settings)
    except (archiving.ArchiveError, ValueError) as exc:
        print(f"iot-platform archive: {exc}", file=sys.stderr)
        return 1
    data = {
        "archive_url": url,
        "retention_days": settings.retention_days,
        "days": [r.day.isoformat() for r in results],
        "rows": sum(f.rows for r in results for f in r.files),
    }
    lines = [r.describe() for r in results]
    lines.append(f"archive: {len(results)} day(s) older than {settings.retention_days} days to {url}")
    _emit(as_json, data, lines)
    return 0


@click.command(help="bring an archived day (YYYY-MM-DD or a partition name) back from ARCHIVE_URL")
@click.argument("day")
def restore(day: str) -> int:
    from ingest_service.core.database import resolve_target
    from ingest_service.lifecycle.archive import ArchiveError
    from ingest_service.lifecycle.commands import run_restore

    settings = database_settings()
    try:
        print(run_restore(resolve_target(settings), settings, day).describe())
    except (ArchiveError, ValueError) as exc:
        print(f"iot-platform restore: {exc}", file=sys.stderr)
        return 1
    return 0


class _Timestamp(click.ParamType):
    """An ISO 8601 time; without an offset, UTC."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time", param, ctx)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@click.command(
    help="decide ledger rows whose current outcome is an error again, with today's record types; their errors "
    "are superseded, never rewritten"
)
@click.option("--reason", "reasons", multiple=True, help="current error reason (repeatable)")
@click.option("--since", type=_Timestamp(), help="received at or after this time (ISO 8601, UTC by default)")
@click.option("--until", type=_Timestamp(), help="received before this time")
@click.option("--device", "device_ids", type=int, multiple=True, help="device id (repeatable)")
@click.option("--event-type", "event_types", multiple=True, help="event_type the row named (repeatable)")
@click.option("--dry-run", is_flag=True, help="print what would change, by reason; write nothing")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, help="rows per batch (one transaction each)")
@click.option("--resume", type=int, metavar="RUN_ID", help="resume an interrupted replay run")
@click.option("--requested-by", help="who asked, stored on the run  [default: the login user]")
@json_option
def replay(
    reasons: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    device_ids: tuple[int, ...],
    event_types: tuple[str, ...],
    dry_run: bool,
    batch_size: int,
    resume: int | None,
    requested_by: str | None,
    as_json: bool,
) -> int:
    import getpass

    from ingest_service.core.database import resolve_target
    from ingest_service.lifecycle import replay as replaying

    settings = database_settings()
    selection = replaying.Selection(
        reasons=reasons, since=since, until=until, device_ids=device_ids, event_types=event_types
    )
    try:
        result = replaying.run(
            resolve_target(settings).url,
            settings,
            selection,
            requested_by=requested_by or f"{getpass.getuser()} (iot-platform replay)",
            dry_run=dry_run,
            batch_size=batch_size,
            resume=resume,
            # With --json, stdout is the one JSON object: the progress goes to stderr.
            out=(lambda line: print(line, file=sys.stderr, flush=True)) if as_json else print,
        )
    except replaying.ReplayError as exc:
        print(f"iot-platform replay: {exc}", file=sys.stderr)
        return 2
    _emit(as_json, result.as_dict(), replaying.summary(result))
    return 0

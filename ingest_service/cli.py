"""`iot-platform`: one entry point for the platform's pieces."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from ingest_service.core.config import PROJECT_ROOT, Settings
from ingest_service.core.database import (
    DatabaseTarget,
    embedded_data_dir,
    resolve_target,
    stop_embedded,
    tool_environment,
)

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"


def _settings() -> Settings:
    """Settings for the database commands (db, migrate, dbt): they never use the provisioning secret,
    so they must not refuse to run where it is unset. `serve` checks the secret itself."""
    if os.environ.get("DEV_MODE") is None:
        return Settings(dev_mode=True)
    return Settings()


def _target() -> DatabaseTarget:
    return resolve_target(_settings())


def cmd_db(args: argparse.Namespace) -> int:
    settings = _settings()
    if args.action == "stop":
        stopped = stop_embedded(settings)
        print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
        return 0
    target = resolve_target(settings)
    if args.action == "url":
        print(target.url)
    elif args.action == "env":
        for key, value in tool_environment(target, base={}).items():
            print(f"export {key}={value!r}")
    else:
        where = f"embedded, data in {embedded_data_dir(settings)}" if target.embedded else "DATABASE_URL"
        print(f"PostgreSQL ready ({where}): {target.url}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from ingest_service.core import migrate

    settings = _settings()
    target = resolve_target(settings)
    migrate.upgrade(target)
    print(f"migrated {target.parts['dbname']} to {migrate.current_revision(target)}")
    if settings.ingest_buffer == "jetstream":
        from ingest_service.buffer.stream import ensure_stream_sync

        print(f"buffer: {ensure_stream_sync(settings)}")
    return 0


def cmd_dbt(args: argparse.Namespace) -> int:
    target = _target()
    env = tool_environment(target)
    env.setdefault("DBT_PROFILES_DIR", str(DBT_PROJECT_DIR))
    dbt = Path(sys.executable).with_name("dbt")
    return subprocess.call([str(dbt), *args.dbt_args], cwd=DBT_PROJECT_DIR, env=env)


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay ledger rows whose current outcome is an error (ingest_service/lifecycle/replay.py)."""
    import getpass

    from ingest_service.lifecycle import replay

    settings = _settings()
    selection = replay.Selection(
        reasons=tuple(args.reason),
        since=args.since,
        until=args.until,
        device_ids=tuple(args.device),
        event_types=tuple(args.event_type),
    )
    try:
        result = replay.run(
            resolve_target(settings).url,
            settings,
            selection,
            requested_by=f"{getpass.getuser()} (iot-platform replay)",
            dry_run=args.dry_run,
            batch_size=args.batch_size,
            resume=args.resume,
        )
    except replay.ReplayError as exc:
        print(f"iot-platform replay: {exc}", file=sys.stderr)
        return 2
    print("\n".join(replay.summary(result)))
    return 0


def _timestamp(value: str) -> datetime:
    """An ISO 8601 time; without an offset, UTC."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iot-platform", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="start the embedded PostgreSQL (or check DATABASE_URL) and print where it is")
    db.add_argument("action", nargs="?", default="start", choices=["start", "url", "env", "stop"])
    db.set_defaults(func=cmd_db)

    mig = sub.add_parser(
        "migrate",
        help="apply the schema migrations to DATABASE_URL (or the embedded server); with INGEST_BUFFER=jetstream, "
        "create or update the JetStream streams and consumer too",
    )
    mig.set_defaults(func=cmd_migrate)

    dbt = sub.add_parser("dbt", help="run dbt from dbt_project/ against the configured database", add_help=False)
    dbt.add_argument("dbt_args", nargs=argparse.REMAINDER)
    dbt.set_defaults(func=cmd_dbt)

    rep = sub.add_parser(
        "replay",
        help="decide ledger rows whose current outcome is an error again, with today's record types; "
        "their errors are superseded, never rewritten",
    )
    rep.add_argument("--reason", action="append", default=[], help="current error reason (repeatable)")
    rep.add_argument("--since", type=_timestamp, help="received at or after this time (ISO 8601, UTC by default)")
    rep.add_argument("--until", type=_timestamp, help="received before this time")
    rep.add_argument("--device", type=int, action="append", default=[], help="device id (repeatable)")
    rep.add_argument("--event-type", action="append", default=[], help="event_type the row named (repeatable)")
    rep.add_argument("--dry-run", action="store_true", help="print what would change, by reason; write nothing")
    rep.add_argument("--batch-size", type=int, default=1000, help="rows per batch (one transaction each)")
    rep.add_argument("--resume", type=int, metavar="RUN_ID", help="resume an interrupted replay run")
    rep.set_defaults(func=cmd_replay)

    _add_service_commands(sub)
    return parser


def _add_service_commands(sub: argparse._SubParsersAction) -> None:
    """serve / publish / up / mqtt: defined beside the processes they start."""
    from ingest_service import runner
    from ingest_service.mqtt import bridge

    runner.register(sub)
    bridge.register(sub)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pgserver warns when XDG_RUNTIME_DIR is unset (it falls back to /tmp): not actionable here.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:
        for error in exc.errors():
            print(f"iot-platform: configuration error: {error['msg']}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

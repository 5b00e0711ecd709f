"""Archive, then retain: whole day partitions to Parquet, verified, then detached and dropped.

`archive()` takes every day whose partitions are older than RETENTION_DAYS, and for each day:

1. writes each of the day's partitions (ledger, facts, outcomes) to `<ARCHIVE_URL>/<day>/<table>.parquet`
   and a `manifest.json` (per file: rows, id range, SHA-256 of the file, SHA-256 of its rows);
2. reads the manifest and every file back and checks them against each other and against the
   table (rows and id range);
3. only then detaches each partition, checks once more that nothing arrived in it meanwhile, and
   drops it. A mismatch anywhere stops the day before anything is dropped (a detached partition is
   attached again). Never a row-level DELETE: the ledger's immutability trigger stays on.

`restore()` brings a day back: it verifies the files against the manifest, recreates the day's
partitions and copies the rows in (INSERT is all the ledger allows, and all it needs).

The archive is any fsspec URL: a local folder (the default, DATA_DIR/archive) or s3://bucket/prefix
(s3fs; an S3-compatible store such as MinIO or Ceph through AWS_ENDPOINT_URL). A failure of the
store, whatever its backend raises, is an ArchiveError that names the URL: nothing was dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import fsspec
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from ingest_service.lifecycle.partitions import Partition, list_partitions, today

BATCH_ROWS = 50_000
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1

# PostgreSQL type -> Arrow type; jsonb is archived as its text (restored as jsonb, equal value).
ARROW_TYPES: dict[str, pa.DataType] = {
    "bigint": pa.int64(),
    "integer": pa.int32(),
    "smallint": pa.int16(),
    "text": pa.string(),
    "jsonb": pa.string(),
    "bytea": pa.binary(),
    "boolean": pa.bool_(),
    "double precision": pa.float64(),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
}

COLUMNS = """
select column_name, data_type from information_schema.columns
where table_schema = 'ingest' and table_name = %s order by ordinal_position
"""


class ArchiveError(Exception):
    """The archive does not match its manifest or its table: nothing was dropped."""


@dataclass
class FileEntry:
    table: str
    partition: str
    path: str  # relative to the day's folder
    rows: int
    id_column: str
    id_min: int | None
    id_max: int | None
    sha256: str  # of the file's bytes
    rows_sha256: str  # of the rows, in id order (independent of the Parquet encoding)


@dataclass
class Manifest:
    day: str
    created_at: str
    files: list[FileEntry] = field(default_factory=list)
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        files = [FileEntry(**entry) for entry in data.pop("files")]
        return cls(files=files, **data)


@dataclass
class DayResult:
    day: date
    action: str  # archived | restored
    files: list[FileEntry]

    def describe(self) -> str:
        tables = ", ".join(f"{f.table} {f.rows:,}" for f in self.files)
        return f"{self.day.isoformat()}: {self.action} ({tables})"


class Archive:
    """An fsspec location: <root>/<YYYY-MM-DD>/{manifest.json, <table>.parquet}."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)

    def day_dir(self, day: date) -> str:
        return f"{self.root.rstrip('/')}/{day.isoformat()}"

    def path(self, day: date, name: str) -> str:
        return f"{self.day_dir(day)}/{name}"

    def read_manifest(self, day: date) -> Manifest:
        path = self.path(day, MANIFEST)
        if not self.fs.exists(path):
            raise ArchiveError(f"no archive of {day.isoformat()} at {self.url} (missing {MANIFEST})")
        with self.fs.open(path, "rb") as f:
            text = f.read()
        try:
            return Manifest.from_json(text.decode())
        except (ValueError, TypeError, KeyError) as exc:
            raise ArchiveError(f"{path}: not a manifest ({exc})") from exc

    def write_manifest(self, manifest: Manifest) -> None:
        with self.fs.open(self.path(date.fromisoformat(manifest.day), MANIFEST), "wb") as f:
            f.write(manifest.to_json().encode())

    def days(self) -> list[date]:
        if not self.fs.exists(self.root):
            return []
        found = []
        for entry in self.fs.ls(self.root, detail=False):
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            try:
                day = date.fromisoformat(name)
            except ValueError:
                continue
            if self.fs.exists(self.path(day, MANIFEST)):
                found.append(day)
        return sorted(found)


# ---- rows <-> files


def _columns(conn: psycopg.Connection, table: str) -> list[tuple[str, str]]:
    columns = [(name, kind) for name, kind in conn.execute(COLUMNS, (table,)).fetchall()]
    unknown = [f"{name} {kind}" for name, kind in columns if kind not in ARROW_TYPES]
    if unknown:
        raise ArchiveError(f"ingest.{table}: no Arrow type for {', '.join(unknown)}")
    return columns


def _id_column(columns: Sequence[tuple[str, str]]) -> str:
    names = [name for name, _ in columns]
    return "id" if "id" in names else "raw_record_id"


def _schema(columns: Sequence[tuple[str, str]]) -> pa.Schema:
    return pa.schema([pa.field(name, ARROW_TYPES[kind]) for name, kind in columns])


def _canonical(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _hash_rows(digest: Any, rows: Iterable[Sequence[Any]]) -> None:
    for row in rows:
        digest.update(("\t".join(_canonical(v) for v in row) + "\n").encode())


def _select(partition: str, columns: Sequence[tuple[str, str]], id_column: str) -> sql.Composed:
    exprs = [
        sql.SQL("{}::text").format(sql.Identifier(name)) if kind == "jsonb" else sql.Identifier(name)
        for name, kind in columns
    ]
    return sql.SQL("select {} from ingest.{} order by {}").format(
        sql.SQL(", ").join(exprs), sql.Identifier(partition), sql.Identifier(id_column)
    )


def _table_stats(conn: psycopg.Connection, partition: str, id_column: str) -> tuple[int, int | None, int | None]:
    row = conn.execute(
        sql.SQL("select count(*), min({id}), max({id}) from ingest.{p}").format(
            id=sql.Identifier(id_column), p=sql.Identifier(partition)
        )
    ).fetchone()
    assert row is not None
    return int(row[0]), row[1], row[2]


def _file_sha256(archive: Archive, path: str) -> str:
    digest = hashlib.sha256()
    with archive.fs.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def export_partition(conn: psycopg.Connection, archive: Archive, partition: Partition) -> FileEntry:
    """Write one partition to <day>/<table>.parquet, in id order; its manifest entry."""
    assert partition.day is not None
    columns = _columns(conn, partition.table)
    id_column = _id_column(columns)
    schema = _schema(columns)
    id_at = [name for name, _ in columns].index(id_column)
    name = f"{partition.table}.parquet"
    path = archive.path(partition.day, name)
    archive.fs.makedirs(archive.day_dir(partition.day), exist_ok=True)
    rows_digest = hashlib.sha256()
    count, id_min, id_max = 0, None, None
    with (
        conn.transaction(),
        conn.cursor(name=f"archive_{partition.name}") as cur,
        archive.fs.open(path, "wb") as f,
        pq.ParquetWriter(f, schema) as writer,
    ):
        cur.itersize = BATCH_ROWS
        cur.execute(_select(partition.name, columns, id_column))
        while batch := cur.fetchmany(BATCH_ROWS):
            _hash_rows(rows_digest, batch)
            count += len(batch)
            id_min = batch[0][id_at] if id_min is None else id_min
            id_max = batch[-1][id_at]
            arrays = [
                pa.array(values, type=field.type)
                for values, field in zip(zip(*batch, strict=True), schema, strict=True)
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    return FileEntry(
        table=partition.table,
        partition=partition.name,
        path=name,
        rows=count,
        id_column=id_column,
        id_min=id_min,
        id_max=id_max,
        sha256=_file_sha256(archive, path),
        rows_sha256=rows_digest.hexdigest(),
    )


def read_file(archive: Archive, day: date, entry: FileEntry) -> pa.Table:
    """Read one archived file, checked against its manifest entry (bytes, rows, id range, row hash)."""
    path = archive.path(day, entry.path)
    if not archive.fs.exists(path):
        raise ArchiveError(f"{path}: missing")
    if (sha := _file_sha256(archive, path)) != entry.sha256:
        raise ArchiveError(f"{path}: SHA-256 {sha} differs from the manifest's {entry.sha256}")
    try:
        with archive.fs.open(path, "rb") as f:
            # One thread: Arrow's decoding pool can abort the process at exit (apache/arrow#34314),
            # which a CLI run that did its work must not turn into a failure.
            table = pq.read_table(io.BytesIO(f.read()), use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        raise ArchiveError(f"{path}: unreadable Parquet ({exc})") from exc
    digest = hashlib.sha256()
    _hash_rows(digest, zip(*(column.to_pylist() for column in table.columns), strict=True))
    ids = table.column(entry.id_column).to_pylist() if table.num_rows else []
    found = (table.num_rows, ids[0] if ids else None, ids[-1] if ids else None, digest.hexdigest())
    expected = (entry.rows, entry.id_min, entry.id_max, entry.rows_sha256)
    if found != expected:
        raise ArchiveError(f"{path}: rows, id range, row hash {found} differ from the manifest's {expected}")
    return table


def verify_day(conn: psycopg.Connection, archive: Archive, day: date, partitions: Sequence[Partition]) -> Manifest:
    """The day's manifest and files agree with each other and with the partitions still in the table."""
    manifest = archive.read_manifest(day)
    by_partition = {entry.partition: entry for entry in manifest.files}
    missing = sorted({p.name for p in partitions} - set(by_partition))
    if missing:
        raise ArchiveError(f"{day.isoformat()}: the manifest lacks {', '.join(missing)}")
    for partition in partitions:
        entry = by_partition[partition.name]
        read_file(archive, day, entry)
        stats = _table_stats(conn, partition.name, entry.id_column)
        if stats != (entry.rows, entry.id_min, entry.id_max):
            raise ArchiveError(
                f"ingest.{partition.name}: rows and id range {stats} differ from the archive's "
                f"{(entry.rows, entry.id_min, entry.id_max)}"
            )
    return manifest


# ---- archive


def due_days(conn: psycopg.Connection, retention_days: int, on: date | None = None) -> dict[date, list[Partition]]:
    """Day partitions whose whole day is older than the retention (the default partitions never are)."""
    horizon = (on or today()) - timedelta(days=retention_days)
    due: dict[date, list[Partition]] = {}
    for partition in list_partitions(conn):
        if partition.day is not None and partition.day < horizon:
            due.setdefault(partition.day, []).append(partition)
    return dict(sorted(due.items()))


def _bounds(day: date) -> tuple[str, str]:
    return f"{day.isoformat()} 00:00:00+00", f"{(day + timedelta(days=1)).isoformat()} 00:00:00+00"


def _detach(conn: psycopg.Connection, partition: Partition) -> None:
    with conn.transaction():
        conn.execute(
            sql.SQL("alter table ingest.{} detach partition ingest.{}").format(
                sql.Identifier(partition.table), sql.Identifier(partition.name)
            )
        )


def _attach(conn: psycopg.Connection, partition: Partition) -> None:
    assert partition.day is not None
    start, end = _bounds(partition.day)
    with conn.transaction():
        conn.execute(
            sql.SQL("alter table ingest.{} attach partition ingest.{} for values from ({}) to ({})").format(
                sql.Identifier(partition.table), sql.Identifier(partition.name), sql.Literal(start), sql.Literal(end)
            )
        )


def archive_day(conn: psycopg.Connection, archive: Archive, day: date, partitions: Sequence[Partition]) -> DayResult:
    """Export, verify, then detach and drop the day's partitions (see the module docstring)."""
    manifest = Manifest(day=day.isoformat(), created_at=datetime.now(UTC).isoformat())
    for partition in sorted(partitions):
        manifest.files.append(export_partition(conn, archive, partition))
    archive.write_manifest(manifest)
    manifest = verify_day(conn, archive, day, partitions)
    by_partition = {entry.partition: entry for entry in manifest.files}
    detached: list[Partition] = []
    try:
        for partition in sorted(partitions):
            _detach(conn, partition)
            detached.append(partition)
            entry = by_partition[partition.name]
            # A row routed to the partition between the check and the detach is caught here.
            stats = _table_stats(conn, partition.name, entry.id_column)
            if stats != (entry.rows, entry.id_min, entry.id_max):
                raise ArchiveError(f"ingest.{partition.name}: changed while being archived ({stats}); run again")
    except BaseException:
        for partition in detached:
            _attach(conn, partition)
        raise
    with conn.transaction():
        for partition in detached:
            conn.execute(sql.SQL("drop table ingest.{}").format(sql.Identifier(partition.name)))
    return DayResult(day, "archived", manifest.files)


@contextlib.contextmanager
def store_errors(archive_url: str) -> Iterator[None]:
    """The store's failures as ArchiveError: each fsspec backend raises its own kind (OSError,
    botocore's, aiohttp's), and the caller only needs to know the archive was not reachable."""
    try:
        yield
    except (ArchiveError, psycopg.Error):
        raise
    except Exception as exc:
        raise ArchiveError(f"{archive_url}: the archive store failed ({type(exc).__name__}: {exc})") from exc


def archive(
    conn: psycopg.Connection, archive_url: str, retention_days: int | None, on: date | None = None
) -> list[DayResult]:
    """Archive every day older than the retention; nothing when the retention is unset."""
    if retention_days is None:
        return []
    with store_errors(archive_url):
        target = Archive(archive_url)
        return [archive_day(conn, target, day, parts) for day, parts in due_days(conn, retention_days, on).items()]


def verify_archive(archive_url: str, days: Iterable[date] | None = None) -> list[Manifest]:
    """Every (or the given) archived day's files against its manifest; raises ArchiveError."""
    with store_errors(archive_url):
        target = Archive(archive_url)
        manifests = []
        for day in days if days is not None else target.days():
            manifest = target.read_manifest(day)
            for entry in manifest.files:
                read_file(target, day, entry)
            manifests.append(manifest)
        return manifests


# ---- restore


def restore(conn: psycopg.Connection, archive_url: str, day: date) -> DayResult:
    """Recreate the day's partitions from the archive, row for row; refuses a partition that exists."""
    with store_errors(archive_url):
        target = Archive(archive_url)
        manifest = target.read_manifest(day)
        tables = [(entry, read_file(target, day, entry)) for entry in manifest.files]
    existing = {p.name for p in list_partitions(conn)}
    present = sorted(entry.partition for entry, _ in tables if entry.partition in existing)
    if present:
        raise ArchiveError(f"{day.isoformat()}: {', '.join(present)} exist already; nothing restored")
    with conn.transaction():
        for entry, table in tables:
            conn.execute("select ingest.create_day_partition(%s, %s)", (entry.table, day))
            names = table.column_names
            copy_sql = sql.SQL("copy ingest.{} ({}) from stdin").format(
                sql.Identifier(entry.partition), sql.SQL(", ").join(map(sql.Identifier, names))
            )
            with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                for batch in table.to_batches(BATCH_ROWS):
                    for row in zip(*(column.to_pylist() for column in batch.columns), strict=True):
                        copy.write_row(row)
            stats = _table_stats(conn, entry.partition, entry.id_column)
            if stats != (entry.rows, entry.id_min, entry.id_max):
                raise ArchiveError(
                    f"ingest.{entry.partition}: restored {stats}, the manifest says "
                    f"{(entry.rows, entry.id_min, entry.id_max)}"
                )
    return DayResult(day, "restored", manifest.files)

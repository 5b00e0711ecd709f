"""The ledger accounting (product invariant 2) for the tests and the bench: every raw row has
exactly one current outcome (a fact, a duplicate, a provisioned startup or an error), and every
outcome has its raw row. An error a replay superseded stays in its table but is no longer current:
the errors counted are `ingest.current_ingest_error` (migration 0007), the one rule of "current".

On a built warehouse the rule is dbt's singular test `assert_each_raw_record_has_exactly_one_outcome`
(a blocking check in Dagster). Tests and the benchmark read the ingest tables right after the API
wrote them, without a dbt build, through this one query: one statement, so one snapshot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg

LEDGER_SQL = """
with outcomes as (
    select raw_record_id, 'fact' as kind from ingest.processed_record
    union all
    select raw_record_id, 'duplicate' from ingest.raw_duplicate
    union all
    select raw_record_id, 'startup' from ingest.device_startup
    union all
    select raw_record_id, 'error' from ingest.current_ingest_error
),
per_raw_row as (
    select raw_record_id, count(*) as outcomes from outcomes group by raw_record_id
)
select
    (select count(*) from ingest.raw_record) as raw_rows,
    (select count(*) from outcomes where kind = 'fact') as facts,
    (select count(*) from outcomes where kind = 'duplicate') as duplicates,
    (select count(*) from outcomes where kind = 'startup') as startups,
    (select count(*) from outcomes where kind = 'error') as errors,
    (select count(*) from ingest.raw_record as raw
        where not exists (select from per_raw_row where per_raw_row.raw_record_id = raw.id)) as without_outcome,
    (select count(*) from per_raw_row where outcomes > 1) as several_outcomes,
    (select count(*) from per_raw_row
        where not exists (select from ingest.raw_record as raw where raw.id = per_raw_row.raw_record_id))
        as outcomes_without_raw_row
"""

# Given raw rows with their outcomes: (raw id, payload, body_text, body_bytes, outcome kinds, fact id,
# error reason).
OUTCOMES_OF_SQL = """
select r.id, r.payload, r.body_text, r.body_bytes,
       array_remove(array[
           case when p.id is not null then 'fact' end,
           case when d.raw_record_id is not null then 'duplicate' end,
           case when s.raw_record_id is not null then 'startup' end,
           case when e.raw_record_id is not null then 'error' end
       ], null) as kinds,
       p.id, e.reason
from ingest.raw_record r
left join ingest.processed_record p on p.raw_record_id = r.id
left join ingest.raw_duplicate d on d.raw_record_id = r.id
left join ingest.device_startup s on s.raw_record_id = r.id
left join ingest.current_ingest_error e on e.raw_record_id = r.id
where r.id = any(%s)
"""


@dataclass(frozen=True)
class Ledger:
    raw_rows: int
    facts: int
    duplicates: int
    startups: int
    errors: int
    without_outcome: int
    several_outcomes: int
    outcomes_without_raw_row: int

    @property
    def accounted(self) -> int:
        return self.facts + self.duplicates + self.startups + self.errors

    @property
    def balanced(self) -> bool:
        """raw rows = facts + duplicates + startups + errors, each raw row with exactly one outcome."""
        return (
            self.raw_rows == self.accounted
            and self.without_outcome == self.several_outcomes == self.outcomes_without_raw_row == 0
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accounted": self.accounted, "balanced": self.balanced}


def ledger(conn: psycopg.Connection) -> Ledger:
    row = conn.execute(LEDGER_SQL).fetchone()
    assert row is not None
    return Ledger(*(int(value) for value in row))


def assert_one_outcome_per_raw_row(conn: psycopg.Connection) -> Ledger:
    counts = ledger(conn)
    assert counts.balanced, f"the ledger does not balance: {counts.as_dict()}"
    return counts


def outcomes_of(conn: psycopg.Connection, raw_ids: list[int]) -> dict[int, tuple[Any, ...]]:
    """Each raw row's stored body and outcome(s), by raw id (rows as OUTCOMES_OF_SQL selects them).

    Without JIT: over the day partitions the planner's estimate passes jit_above_cost, and on a
    server built with LLVM (PostgreSQL 15 here) each call would compile for ~1 s to read a few rows."""
    conn.execute("set jit = off")
    return {row[0]: row for row in conn.execute(OUTCOMES_OF_SQL, (raw_ids,)).fetchall()}

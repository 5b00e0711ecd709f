"""ingest.ingest_error_reason: the reason codes an ingest_error may carry, one row per `Reason` member.

Reasons are data, like record types: dbt tests `ingest_error.reason` as a relationship to this
table, so a reason the code stores but the table lacks fails a test instead of going unnoticed.
The rows come from the code's enumeration (ingest_service/ingest/reasons.py). A later release that
adds a member adds a migration inserting its row with the same `on conflict do nothing`, which a
database created after that release (where this migration already wrote it) passes over.

No foreign key from ingest_error: a row the table lacks must never make the API lose an item.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from ingest_service.ingest.reasons import Reason

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CREATE = """
create table if not exists ingest.ingest_error_reason (
    reason text primary key,
    description text not null
);
comment on table ingest.ingest_error_reason is
    'Reason codes of ingest_error rows (ingest_service/ingest/reasons.py); dbt tests ingest_error.reason against it.';
"""

INSERT = sa.text(
    "insert into ingest.ingest_error_reason (reason, description) values (:reason, :description)"
    " on conflict (reason) do nothing"
)


def upgrade() -> None:
    op.execute(CREATE)
    op.get_bind().execute(INSERT, [{"reason": str(r), "description": r.description} for r in Reason])


def downgrade() -> None:
    op.execute("drop table if exists ingest.ingest_error_reason")

"""Buffered ingest: find a buffered request's ledger rows by request id (receipts, and a writer's
check that a redelivered message is already stored).

A partial index: only buffered requests (request ids `js-...`, ingest_service/buffer/door.py) are
looked up, so direct-mode inserts do not pay for an index entry. Built CONCURRENTLY, outside the
migration's transaction, so an existing ledger keeps taking writes meanwhile. (A build that fails
half-way leaves an invalid index behind: drop it and migrate again.)

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(
            "create index concurrently if not exists ix_raw_record_buffered_request"
            " on ingest.raw_record (request_id) where request_id like 'js-%'"
        )


def downgrade() -> None:
    op.execute("drop index if exists ingest.ix_raw_record_buffered_request")

"""Buffered ingest: a buffered request's ledger rows, unique and found by request id.

`iot-platform writer` stores a JetStream message under the message's request id (`js-...`,
ingest_service/buffer/door.py). A unique index on (request_id, batch_index) for those ids makes a
second write of the same message impossible: a writer that stores a redelivered message while
another writer stores the same one gets a unique violation, retries, and then finds the rows. The
same index serves the look-up by request id (receipts, and the writer's check before a write).

Partial: direct-mode rows (any other request id) are not indexed, so their inserts do not pay for
it. Built CONCURRENTLY, outside the migration's transaction, so an existing ledger keeps taking
writes meanwhile (a build that fails half-way leaves an invalid index behind: drop it and migrate
again).

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
            "create unique index concurrently if not exists ux_raw_record_buffered_item"
            " on ingest.raw_record (request_id, batch_index) where request_id like 'js-%'"
        )


def downgrade() -> None:
    op.execute("drop index if exists ingest.ux_raw_record_buffered_item")

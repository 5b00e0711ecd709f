"""An index on the ledger rows of MQTT messages by request id: the MQTT door looks each message's
key up before it writes (docs/mqtt.md, redelivery de-duplication).

Partial (`request_id like 'mqtt:%'`): HTTP requests never need the lookup, and their rows never
enter the index (the predicate is all they pay). Built concurrently, so a large ledger keeps taking
writes while it builds. Superseded once the write path stores delivery keys itself; then a later
migration may drop it.

Revision ID: 0004_mqtt
Revises: 0003
"""

from alembic import op

revision = "0004_mqtt"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(
            "create index concurrently if not exists ix_raw_record_mqtt_request_id "
            "on ingest.raw_record (request_id) where request_id like 'mqtt:%'"
        )


def downgrade() -> None:
    # Schema changes are additive: roll back by redeploying the previous API.
    raise NotImplementedError("additive migrations are not rolled back")

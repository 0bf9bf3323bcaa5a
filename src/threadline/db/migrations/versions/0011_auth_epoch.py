"""auth_epoch: one row whose counter goes up in the same transaction as any change to users or api_keys
(database triggers, so no writer can forget it: the CLI, any server process, a hand-written UPDATE). Server
processes serve authentication from memory and poll this counter to know when to forget what they cached
(docs/security.md, "API keys in memory").

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_TABLES = ("users", "api_keys")
_EVENTS = ("insert", "update", "delete")
_BUMP = "UPDATE auth_epoch SET epoch = epoch + 1 WHERE id = 1"


def upgrade() -> None:
    op.create_table(
        "auth_epoch",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO auth_epoch (id, epoch) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION threadline_bump_auth_epoch() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {_BUMP}; RETURN NULL; END $$"
        )
        for table in _TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_auth_epoch AFTER INSERT OR UPDATE OR DELETE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION threadline_bump_auth_epoch()"
            )
        return
    for table in _TABLES:
        for event in _EVENTS:
            op.execute(f"CREATE TRIGGER {table}_auth_epoch_{event} AFTER {event.upper()} ON {table} BEGIN {_BUMP}; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in _TABLES:
            op.execute(f"DROP TRIGGER {table}_auth_epoch ON {table}")
        op.execute("DROP FUNCTION threadline_bump_auth_epoch()")
    else:
        for table in _TABLES:
            for event in _EVENTS:
                op.execute(f"DROP TRIGGER {table}_auth_epoch_{event}")
    op.drop_table("auth_epoch")

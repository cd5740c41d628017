"""Alembic environment: migrations run on the connection `smartapp.db.schema.upgrade` opens
(under its lock), or offline (`--sql`) against a URL, to hand a script to a DBA."""

from __future__ import annotations

from typing import Any

from alembic import context

from smartapp.db.schema import is_modelled, load_all_tables

config = context.config
metadata = load_all_tables()


def include_name(name: str | None, type_: str, _parents: Any) -> bool:
    # The FTS5 virtual table is created by 0005 in SQL; autogenerate must not drop it.
    return type_ not in ("table", "index") or is_modelled(name)


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        include_name=include_name,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `peerbridge migrate` (smartapp.db.schema.upgrade)")
    # Batch mode: SQLite cannot ALTER most things in place; Alembic then copies the table.
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_name=include_name,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()

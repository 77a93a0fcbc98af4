"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, select, text

from service import db
from service.models import Base, School


def test_models_and_migrations_agree(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diff = compare_metadata(context, Base.metadata)
    # No noise filter is needed: both dialects compare clean, defaults and types included.
    assert diff == [], "models and migrations disagree:\n" + "\n".join(map(repr, diff))


def _schema(engine: Engine) -> dict[str, Any]:
    insp = inspect(engine)
    return {
        name: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(name)],
            sorted((i["name"] or "", tuple(i["column_names"])) for i in insp.get_indexes(name)),
        )
        for name in sorted(insp.get_table_names())
    }


def test_upgrade_again_is_a_no_op(engine: Engine, db_url: str) -> None:
    head = ScriptDirectory.from_config(db.alembic_config(db_url)).get_current_head()
    with engine.begin() as conn:
        conn.execute(School.__table__.insert().values(school_id="s1", name="Kept", row_hash=7))
    before = _schema(engine)

    db.upgrade(db_url)

    engine.dispose()  # see the schema as a new connection would
    assert _schema(engine) == before
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        kept = conn.execute(select(School.name, School.row_hash)).all()
    assert versions == [head]
    assert [tuple(r) for r in kept] == [("Kept", 7)]

"""A small district behind the API for route tests: two schools, three cases, one guardian.

- Lincoln High (sch-1, number 101): Ana (1001) chronically absent, Ben (1002) failing math.
- Roosevelt (sch-2, number 102): Cai (2001) failing math.
Case managers come from the example configuration: 101 -> cm-rivera / cm-okafor, 102 -> cm-nguyen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from conftest import settings_for
from flask.testing import FlaskClient
from sqlalchemy import Engine, select

from service.api import create_app
from service.api.auth import create_token
from service.config import Settings
from service.models import Case
from service.pipeline import run_evaluate, run_sync
from tests.builders import TinyDistrict

GUARDIAN_PHONE = "(212) 555-0101"
GUARDIAN_E164 = "+12125550101"


@dataclass
class World:
    engine: Engine
    settings: Settings
    client: FlaskClient
    as_of: date
    case_of: dict[str, int]  # student sourcedId -> case id
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, name: str, *scopes: str, schools: list[str] | None = None) -> str:
        if name not in self.tokens:
            self.tokens[name] = create_token(self.engine, name, scopes, schools)[1]
        return self.tokens[name]

    def headers(self, name: str, *scopes: str, schools: list[str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(name, *scopes, schools=schools)}"}

    def get(self, path: str, who: dict[str, str]) -> Any:
        return self.client.get(path, headers=who)


def build_world(engine: Engine, db_url: str, tmp_path: Path, **overrides: Any) -> World:
    d = TinyDistrict(tmp_path / "data")
    d.school("sch-1", "101", "Lincoln High")
    d.school("sch-2", "102", "Roosevelt Middle")
    days = d.school_days("sch-1", 80)
    d.school_days("sch-2", 80)
    d.student("s1", "1001", school="sch-1", guardians=("g1",), given="Ana")
    d.student("s2", "1002", school="sch-1", given="Ben")
    d.student("s3", "2001", school="sch-2", given="Cai")
    d.guardian("g1", ("s1",), sms=GUARDIAN_PHONE, given="Rosa")
    for day in days[2:10]:
        d.absent("1001", day)
    d.grade("s2", "Mathematics", 41)
    d.grade("s3", "Mathematics", 38)
    d.write()
    settings = settings_for(db_url, d.root, tmp_path / "out", **overrides)
    run_sync(engine, settings)
    as_of = days[55]  # inside the grading period the grades belong to
    run_evaluate(engine, settings, as_of)
    with engine.connect() as conn:
        case_of = dict(conn.execute(select(Case.student_id, Case.id)).all())
    client = create_app(settings, engine).test_client()
    return World(engine, settings, client, as_of, {str(k): int(v) for k, v in case_of.items()})

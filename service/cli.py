"""`casebridge`: the command line district IT runs (and the scheduler calls the same units)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from sqlalchemy import Engine

from service import logging as cb_logging
from service.cases import EvaluationReport
from service.config import Settings, load_settings
from service.db import SchemaNotCurrent
from service.errors import ConfigError
from service.ingest import SyncReport
from service.outbox import DispatchReport
from service.pipeline import (
    database_url,
    open_engine,
    outbox_counts,
    run_dispatch,
    run_evaluate,
    run_sync,
)

# Piped output (CI logs, cron mail) gets a width that fits the summary tables.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
DEFAULT_CONFIG = "config/district.yaml"


def _settings(ctx: click.Context) -> Settings:
    path = ctx.obj["config"]
    try:
        return load_settings(path)
    except ConfigError as exc:
        console.print(f"[bold red]Configuration problems ({len(exc.problems)}):[/]")
        for p in exc.problems:
            console.print(f"  {p}", markup=False, soft_wrap=True)
        ctx.exit(2)
        raise  # unreachable: ctx.exit raises


@click.group()
@click.option(
    "--config",
    "config",
    envvar="CASEBRIDGE_CONFIG",
    default=DEFAULT_CONFIG,
    show_default=True,
    help="District configuration file (or $CASEBRIDGE_CONFIG).",
)
@click.option("--log-level", default="WARNING", show_default=True)
@click.option("--log-json", is_flag=True, help="Logs as JSON lines (for log shippers).")
@click.pass_context
def main(ctx: click.Context, config: str, log_level: str, log_json: bool) -> None:
    """casebridge: SIS data in, cases, staff tasks and family messages out."""
    cb_logging.configure(log_level.upper(), log_json)
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


def _engine(settings: Settings, upgrade: bool = False) -> Engine:
    try:
        return open_engine(settings, upgrade=upgrade)
    except SchemaNotCurrent as exc:
        console.print(f"[bold red]{escape(str(exc))}[/]", soft_wrap=True)
        sys.exit(2)


@main.command("check-config")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the configuration and list every problem with its key."""
    settings = _settings(ctx)
    console.print(
        f"[green]OK[/] {settings.source_file}: {len(settings.sources)} sources, "
        f"{len(settings.rules)} rules, {len(settings.caseloads)} caseloads, "
        f"{len(settings.destinations)} destinations, {len(settings.channels)} channels"
    )


@main.group("db")
def db_group() -> None:
    """Database schema commands."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the schema to the latest revision."""
    settings = _settings(ctx.find_root())
    from service import db

    db.upgrade(database_url(settings))
    console.print("[green]Schema is at the latest revision.[/]")


@contextmanager
def _progress(label: str) -> Iterator[Any]:
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
    ]
    with Progress(*columns, console=console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def advance(entity: str, rows: int) -> None:
            if entity not in tasks:
                tasks[entity] = progress.add_task(f"{label} {entity}", total=None)
            progress.advance(tasks[entity], rows)

        yield advance


def _sync(
    settings: Settings,
    source: str | None,
    full: bool = False,
    dry_run: bool = False,
    upgrade: bool = False,
) -> list[SyncReport]:
    engine = _engine(settings, upgrade)
    with _progress("sync") as advance:
        reports = run_sync(engine, settings, source, advance, full, dry_run)
    print_sync(reports)
    if dry_run:
        console.print("[yellow]Dry run: nothing was written.[/]")
    return reports


def _evaluate(settings: Settings, as_of: date | None) -> EvaluationReport:
    engine = _engine(settings)
    with console.status("evaluating indicators and rules"):
        report = run_evaluate(engine, settings, as_of)
    print_evaluation(report)
    return report


def _dispatch(settings: Settings) -> DispatchReport:
    engine = _engine(settings)
    with console.status("delivering the outbox"):
        report = run_dispatch(engine, settings)
    print_dispatch(report, outbox_counts(engine))
    return report


@main.command()
@click.option("--source", help="Only this source (by name).")
@click.option("--full", is_flag=True, help="Reconcile everything instead of reading changes.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Read, map and count, write nothing. Each source runs alone, so rows that refer to "
    "another source's new records (SIS export -> roster) count as unknown.",
)
@click.pass_context
def sync(ctx: click.Context, source: str | None, full: bool, dry_run: bool) -> None:
    """Import every configured source into the canonical tables."""
    settings = _settings(ctx)
    if source and source not in {s.name for s in settings.sources}:
        console.print(f"[red]No source named {source!r} in {settings.source_file}.[/]")
        sys.exit(2)
    reports = _sync(settings, source, full, dry_run)
    if any(r.error for r in reports):
        sys.exit(1)


@main.command()
@click.option("--as-of", type=click.DateTime(["%Y-%m-%d"]), help="Evaluate as of this date.")
@click.pass_context
def evaluate(ctx: click.Context, as_of: Any) -> None:
    """Compute indicators, run the rules, open and update cases."""
    _evaluate(_settings(ctx), as_of.date() if as_of else None)


@main.command()
@click.pass_context
def dispatch(ctx: click.Context) -> None:
    """Deliver due outbox items (tasks, family messages)."""
    _dispatch(_settings(ctx))


@main.command()
@click.option("--as-of", type=click.DateTime(["%Y-%m-%d"]), help="Evaluate as of this date.")
@click.pass_context
def run(ctx: click.Context, as_of: Any, upgrade: bool = False) -> None:
    """sync, evaluate and dispatch, in that order."""
    settings = _settings(ctx)
    reports = _sync(settings, None, upgrade=upgrade)
    _evaluate(settings, as_of.date() if as_of else None)
    _dispatch(settings)
    out = settings.resolve(settings.output_dir)
    console.print(f"Output folder: {out.resolve()}")
    if any(r.error for r in reports):
        sys.exit(1)


@main.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the whole pipeline on the bundled sample district (config/district.yaml).

    The embedded demo creates or migrates its SQLite schema itself; other commands never do.
    """
    ctx.invoke(run, upgrade=True)


@main.command()
@click.option("--students", default=250, show_default=True, type=click.IntRange(1, 450_000))
@click.option("--seed", default=7, show_default=True)
@click.option("--as-of", type=click.DateTime(["%Y-%m-%d"]), default="2026-11-20", show_default=True)
@click.option("--oneroster-version", type=click.Choice(["1.1", "1.2"]), default="1.2")
@click.option("--bad-rows", default=0, show_default=True, help="Malformed rows to inject.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
def generate(
    students: int, seed: int, as_of: Any, oneroster_version: str, bad_rows: int, out_dir: Path
) -> None:
    """Write a synthetic district: OneRoster CSV plus SIS attendance/discipline/calendar."""
    from tools.synthetic import generate_district

    with console.status(f"generating {students} students"):
        summary = generate_district(
            out_dir, students=students, seed=seed, as_of=as_of.date(),
            oneroster_version=oneroster_version, bad_rows=bad_rows,
        )  # fmt: skip
    table = Table(title=f"Synthetic district in {out_dir}")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, rows in sorted(summary.files.items()):
        table.add_row(name, f"{rows:,}")
    console.print(table)
    console.print(f"{summary.bytes_written:,} bytes; {summary.bad_rows} malformed rows injected")


@main.command()
@click.pass_context
def scheduler(ctx: click.Context) -> None:
    """Run the scheduled jobs (sync, evaluate, dispatch) until stopped."""
    from jobs.scheduler import run_scheduler

    run_scheduler(_settings(ctx))


@main.command("connectors")
def connectors_cmd() -> None:
    """Every source, destination and channel kind this installation knows, with its keys."""
    from connectors.registry import kinds

    for role in ("source", "destination", "channel"):
        table = Table(title=f"{role} kinds")
        table.add_column("kind")
        table.add_column("what it is")
        table.add_column("config keys (* required)")
        if role != "source":
            table.add_column("idempotency")
        table.add_column("module")
        for name, k in sorted(kinds(role).items()):
            fields = [
                f"{key}{'*' if info.is_required() else ''}"
                for key, info in k.config.model_fields.items()
                if key not in ("kind",)
            ]
            extra = [k.idempotency or ""] if role != "source" else []
            table.add_row(name, k.summary, ", ".join(fields), *extra, k.config.__module__)
        console.print(table)


@main.group("tools")
def tools_group() -> None:
    """Staff tools: status coming back from tools that cannot call us (Google Sheets)."""


@tools_group.command("poll")
@click.pass_context
def tools_poll(ctx: click.Context) -> None:
    """Read status changes people made in polled tools and apply them to the cases."""
    from service.tool_status import poll_tools

    settings = _settings(ctx)
    outcomes = poll_tools(_engine(settings), settings)
    for outcome, n in sorted(outcomes.items()):
        console.print(f"{outcome}: {n}")
    if not outcomes:
        console.print("no changes in the staff tools")


@main.group("outbox")
def outbox_group() -> None:
    """Look at outbox items and resolve the ones that need a person."""


OUTBOX_STATUSES = ("pending", "sending", "delivered", "dead", "needs_review", "suppressed",
                   "superseded")  # fmt: skip


@outbox_group.command("list")
@click.option(
    "--status",
    type=click.Choice(OUTBOX_STATUSES),
    multiple=True,
    help="Only items in this status (repeatable). Default: all but delivered.",
)
@click.option("--case", "case_id", type=int, help="Only this case's items.")
@click.option("--dead", is_flag=True, help="Only dead-lettered items (same as --status dead).")
@click.option("--limit", default=50, show_default=True)
@click.pass_context
def outbox_list(
    ctx: click.Context, status: tuple[str, ...], case_id: int | None, dead: bool, limit: int
) -> None:
    """Items with their status and the reason for it (ids only: no student data)."""
    from service.outbox_admin import list_items

    engine = _engine(_settings(ctx.find_root()))
    status = (*status, "dead") if dead else status
    wanted = list(dict.fromkeys(status)) or [s for s in OUTBOX_STATUSES if s != "delivered"]
    rows = list_items(engine, wanted, case_id, limit)
    table = Table(title=f"Outbox ({', '.join(wanted)})")
    for col in ("id", "kind", "target", "case", "contact", "status", "reason / last error",
                "attempts", "next attempt"):  # fmt: skip
        table.add_column(col, justify="right" if col in ("id", "case", "attempts") else "left")
    for r in rows:
        why = r.reason or ""
        if r.last_error:
            why = f"{why}; {r.last_error}" if why else r.last_error
        table.add_row(
            str(r.id), r.kind, r.target, str(r.case_id or ""), r.contact_id or "", r.status,
            escape(why[:120]), str(r.attempts), r.next_attempt_at.strftime("%Y-%m-%d %H:%M"),
        )  # fmt: skip
    console.print(table)
    if len(rows) == limit:
        console.print(f"[yellow]First {limit} shown; use --limit for more.[/]")


@outbox_group.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--status", type=click.Choice(("dead", "needs_review")),
              help="Every item in this status instead of IDS.")  # fmt: skip
@click.pass_context
def outbox_retry(ctx: click.Context, ids: tuple[int, ...], status: str | None) -> None:
    """Send dead items again now (attempts start over).

    An item in needs_review may have gone out already: `resolve` it instead, after checking.
    """
    from service.outbox_admin import retry_items

    if not ids and not status:
        raise click.UsageError("give item IDS or --status dead")
    engine = _engine(_settings(ctx.find_root()))
    done = retry_items(engine, list(ids), status)
    console.print(f"{done} item(s) queued again.")


@outbox_group.command("resolve")
@click.argument("item_id", type=int)
@click.option("--outcome", type=click.Choice(("sent", "not-sent", "drop")), required=True,
              help="sent: it went out (mark delivered, record the disclosure); not-sent: send "
                   "it now; drop: never send it.")  # fmt: skip
@click.option("--note", default="", help="What you checked, kept on the item.")
@click.pass_context
def outbox_resolve(ctx: click.Context, item_id: int, outcome: str, note: str) -> None:
    """Settle an item in needs_review (or stuck in sending) after checking the provider."""
    from service.outbox_admin import resolve_item

    settings = _settings(ctx.find_root())
    engine = _engine(settings)
    try:
        status = resolve_item(engine, settings, item_id, outcome, note)
    except LookupError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        sys.exit(2)
    console.print(f"Item {item_id} is now {status}.")


# -- summaries ----------------------------------------------------------------------------------


def print_sync(reports: list[SyncReport]) -> None:
    table = Table(title="Sync")
    for col in ("source", "entity", "read", "inserted", "updated", "deactivated", "unchanged",
                "quarantined"):  # fmt: skip
        table.add_column(
            col, justify="left" if col in ("source", "entity", "quarantined") else "right"
        )
    problems: list[str] = []
    for report in reports:
        if report.error:
            table.add_row(report.source, "[red]failed[/]", "", "", "", "", "", report.error)
            continue
        for entity, s in report.entities.items():
            q = ", ".join(f"{k} {v}" for k, v in sorted(s.quarantined.items())) or "0"
            table.add_row(
                report.source, entity, f"{s.read:,}", f"{s.inserted:,}", f"{s.updated:,}",
                f"{s.deactivated:,}", f"{s.unchanged:,}", q,
            )  # fmt: skip
            problems += s.problems
    console.print(table)
    for p in problems:
        console.print(f"[yellow]problem:[/] {escape(p)}", soft_wrap=True)


def print_evaluation(r: EvaluationReport) -> None:
    table = Table(title=f"Evaluation as of {r.as_of} (grading period {r.grading_period or '-'})")
    table.add_column("measure")
    table.add_column("count", justify="right")
    table.add_row("students evaluated", f"{r.students_evaluated:,}")
    for rule, n in sorted(r.flagged_by_rule.items()):
        table.add_row(f"flagged by rule {rule}", f"{n:,}")
    for label, value in (
        ("cases opened", r.cases_opened),
        ("cases updated (new reason or relapse)", r.cases_updated),
        ("cases reopened within cooldown", r.cases_reopened),
        ("cases recovering (no reason fires)", r.cases_recovering),
        ("cases closed (recovered)", r.cases_closed),
        ("referrals created", r.referrals_created),
        ("staff tasks queued", r.tasks_enqueued),
        ("family messages queued", r.family_messages_enqueued),
        ("cases without a case manager", r.unassigned),
        ("cases with no reachable guardian", r.no_reachable_family),
    ):
        table.add_row(label, f"{value:,}")
    console.print(table)


def print_dispatch(r: DispatchReport, counts: Counter[str]) -> None:
    table = Table(title="Dispatch")
    table.add_column("measure")
    table.add_column("count", justify="right")
    table.add_row("delivered", f"{r.delivered:,}")
    for target, n in sorted(r.by_target.items()):
        table.add_row(f"  to {target}", f"{n:,}")
    for reason, n in sorted(r.suppressed.items()):
        table.add_row(f"suppressed: {reason}", f"{n:,}")
    for reason, n in sorted(r.deferred.items()):
        table.add_row(f"deferred: {reason}", f"{n:,}")
    table.add_row("superseded by a later revision", f"{r.superseded:,}")
    table.add_row("reconciled after a crash", f"{r.reconciled:,}")
    table.add_row("retried later", f"{r.retried:,}")
    table.add_row("dead-lettered", f"{r.dead:,}")
    table.add_row("needs review", f"{r.needs_review:,}")
    if r.lost_claims:
        table.add_row("claims lost to another worker", f"{r.lost_claims:,}")
    table.add_row("still pending", f"{counts.get('pending', 0):,}")
    table.add_row("in the outbox needing review", f"{counts.get('needs_review', 0):,}")
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    main()

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
from tools.synthetic import QUIRKS

# Piped output (CI logs, cron mail) gets a width that fits the summary tables.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
DEFAULT_CONFIG = "config/district.yaml"

# Exit codes of sync and run, for cron and the scheduler (README "Exit codes").
EXIT_SOURCE_FAILED = 1  # a source could not be read at all
EXIT_STREAM_REFUSED = 3  # a stream was skipped or refused: missing file, bad header, a guard


def sync_exit_code(reports: list[SyncReport]) -> int:
    """0 clean; EXIT_SOURCE_FAILED over EXIT_STREAM_REFUSED when both happened."""
    if any(r.error for r in reports):
        return EXIT_SOURCE_FAILED
    if any(r.refused() for r in reports):
        return EXIT_STREAM_REFUSED
    return 0


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
@click.option(
    "--log-level",
    envvar="CASEBRIDGE_LOG_LEVEL",
    help="DEBUG, INFO, WARNING... [default: INFO for worker and scheduler, else WARNING]",
)
@click.option(
    "--log-json/--log-console",
    "log_json",
    default=None,
    envvar="CASEBRIDGE_LOG_JSON",
    help="Logs as JSON lines (for log shippers) or readable lines. [default: JSON for the "
    "service roles (worker, scheduler), readable for other commands]",
)
@click.pass_context
def main(ctx: click.Context, config: str, log_level: str | None, log_json: bool | None) -> None:
    """casebridge: SIS data in, cases, staff tasks and family messages out."""
    role = ctx.invoked_subcommand in cb_logging.SERVICE_ROLES
    cb_logging.configure(
        (log_level or ("INFO" if role else "WARNING")).upper(),
        role if log_json is None else log_json,
    )
    # One run_id for every line this command logs (a worker's passes get their own).
    cb_logging.bind_run(command=ctx.invoked_subcommand or "")
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


def _engine(settings: Settings, upgrade: bool = False) -> Engine:
    try:
        return open_engine(settings, upgrade=upgrade)
    except SchemaNotCurrent as exc:
        console.print(f"[bold red]{escape(str(exc))}[/]", soft_wrap=True)
        sys.exit(2)


@main.command("check-config")
@click.option(
    "--data",
    is_flag=True,
    help="Also open every configured source: paths, headers, code maps, school numbers, "
    "core subjects.",
)
@click.pass_context
def check_config(ctx: click.Context, data: bool) -> None:
    """Validate the configuration and list every problem with its key."""
    settings = _settings(ctx)
    console.print(
        f"[green]OK[/] {settings.source_file}: {len(settings.sources)} sources, "
        f"{len(settings.rules)} rules, {len(settings.caseloads)} caseloads, "
        f"{len(settings.destinations)} destinations, {len(settings.channels)} channels"
    )
    from service.render import template_warnings

    for template_warning in template_warnings(settings):
        console.print(f"[yellow]warning[/] {escape(str(template_warning))}", soft_wrap=True)
    if data:
        from service.data_check import check_data

        engine = None
        try:
            engine = open_engine(settings)
        except Exception:  # no database yet: the files are still checked
            engine = None
        found = check_data(settings, engine)
        for note in found.notes:
            console.print(f"note: {escape(note)}", soft_wrap=True)
        for warning in found.warnings:
            console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
        for problem in found.problems:
            console.print(f"[red]problem:[/] {escape(problem)}", soft_wrap=True)
        if found.problems:
            console.print(f"[red]{len(found.problems)} data problems.[/]")
            sys.exit(1)
        console.print("[green]Data OK[/]: every configured file opens and matches the config.")


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
    allow_deactivation: bool = False,
) -> list[SyncReport]:
    engine = _engine(settings, upgrade)
    with _progress("sync") as advance:
        reports = run_sync(engine, settings, source, advance, full, dry_run, allow_deactivation)
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
@click.option(
    "--allow-deactivation",
    is_flag=True,
    help="Let a bulk file deactivate more than its source's max_deactivation_share (or an "
    "empty file deactivate everything it fed): for records that really are gone.",
)
@click.pass_context
def sync(
    ctx: click.Context, source: str | None, full: bool, dry_run: bool, allow_deactivation: bool
) -> None:
    """Import every configured source into the canonical tables.

    Exit status: 0 clean, 3 when a stream was skipped or refused (a missing or broken file, a
    bad header, the deactivation guard), 1 when a source failed."""
    settings = _settings(ctx)
    if source and source not in {s.name for s in settings.sources}:
        console.print(f"[red]No source named {source!r} in {settings.source_file}.[/]")
        sys.exit(2)
    reports = _sync(settings, source, full, dry_run, allow_deactivation=allow_deactivation)
    code = sync_exit_code(reports)
    if code:
        sys.exit(code)


@main.command()
@click.option("--as-of", type=click.DateTime(["%Y-%m-%d"]), help="Evaluate as of this date.")
@click.pass_context
def evaluate(ctx: click.Context, as_of: Any) -> None:
    """Compute indicators, run the rules, open and update cases."""
    _evaluate(_settings(ctx), as_of.date() if as_of else None)


@main.command()
@click.pass_context
def dispatch(ctx: click.Context) -> None:
    """Place referrals people sent on their cases, then deliver due outbox items (tasks, family
    messages)."""
    _dispatch(_settings(ctx))


@main.command("follow-ups")
@click.option("--as-of", type=click.DateTime(["%Y-%m-%d"]), help="Plan as of this date.")
@click.pass_context
def follow_ups(ctx: click.Context, as_of: Any) -> None:
    """Re-send the tasks of cases whose check-in came due or that may close (the scheduler does it
    at schedules.follow_up_cron; every evaluation does it too)."""
    from service.cases import follow_up_cases

    settings = _settings(ctx)
    report = follow_up_cases(_engine(settings), settings, as_of.date() if as_of else None)
    console.print(
        f"{report.cases_updated} cases with a check-in due or a close suggestion; "
        f"{report.tasks_enqueued} task updates queued"
    )


@main.command()
@click.pass_context
def digest(ctx: click.Context) -> None:
    """Queue each case manager's digest now (the scheduler does it at schedules.digest_cron)."""
    from service.clock import utcnow
    from service.digest import queue_digests

    settings = _settings(ctx)
    console.print(f"{queue_digests(_engine(settings), settings, utcnow())} digests queued")


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
    code = sync_exit_code(reports)
    if code:
        sys.exit(code)


@main.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the whole pipeline on the bundled sample district (config/district.yaml).

    The embedded demo creates or migrates its SQLite schema itself; other commands never do.
    """
    ctx.invoke(run, upgrade=True)
    _family_messages(_settings(ctx))


def _family_messages(settings: Settings, limit: int = 12) -> None:
    """Each family message sent: language, channel, and the resources with why each was picked
    (ids only, no names of students or families)."""
    from sqlalchemy import select

    from service.intents import FAMILY_NOTICE
    from service.models import OutboxItem

    with _engine(settings).connect() as conn:
        rows = conn.execute(
            select(OutboxItem.id, OutboxItem.contact_id, OutboxItem.result)
            .where(OutboxItem.kind == FAMILY_NOTICE, OutboxItem.status == "delivered")
            .order_by(OutboxItem.id)
        ).all()  # fmt: skip
    table = Table(title=f"Family messages ({len(rows)} sent; first {min(limit, len(rows))})")
    for col in ("item", "contact", "channel", "language", "segments", "resources and why"):
        table.add_column(col)
    for item_id, contact, result in rows[:limit]:
        result = result or {}
        why = result.get("why") or {}
        picks = "\n".join(f"{rid}: {why.get(rid, '-')}" for rid in result.get("resource_ids", []))
        cells = (item_id, contact, result.get("channel"), result.get("language"),
                 result.get("segments", "-"), picks)  # fmt: skip
        table.add_row(*(str(c) for c in cells))
    console.print(table)


@main.command()
@click.option("--students", default=250, show_default=True, type=click.IntRange(1, 450_000))
@click.option("--seed", default=7, show_default=True)
@click.option("--as-of", type=click.DateTime(["%Y-%m-%d"]), default="2026-11-20", show_default=True)
@click.option("--oneroster-version", type=click.Choice(["1.1", "1.2"]), default="1.2")
@click.option("--bad-rows", default=0, show_default=True, help="Malformed rows to inject.")
@click.option(
    "--sis-school-ids",
    type=click.Choice(["number", "sourcedId"]),
    default="number",
    show_default=True,
    help="How the SIS export names schools (real exports use the school number).",
)
@click.option(
    "--quirk",
    "quirks",
    multiple=True,
    type=click.Choice(list(QUIRKS)),
    help="Real-world export damage to add (repeatable): "
    + "; ".join(f"{k}: {v}" for k, v in QUIRKS.items()),
)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
def generate(
    students: int,
    seed: int,
    as_of: Any,
    oneroster_version: str,
    bad_rows: int,
    sis_school_ids: str,
    quirks: tuple[str, ...],
    out_dir: Path,
) -> None:
    """Write a synthetic district: OneRoster CSV plus SIS attendance/discipline/calendar."""
    from tools.synthetic import generate_district

    with console.status(f"generating {students} students"):
        summary = generate_district(
            out_dir, students=students, seed=seed, as_of=as_of.date(),
            oneroster_version=oneroster_version, bad_rows=bad_rows,
            sis_school_ids=sis_school_ids, quirks=quirks,
        )  # fmt: skip
    table = Table(title=f"Synthetic district in {out_dir}")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, rows in sorted(summary.files.items()):
        table.add_row(name, f"{rows:,}")
    console.print(table)
    console.print(f"{summary.bytes_written:,} bytes; {summary.bad_rows} malformed rows injected")
    for quirk, where in summary.quirks.items():
        console.print(f"quirk {quirk}: {where}")


@main.group("quarantine")
def quarantine_group() -> None:
    """Records held back from import: where they came from and why."""


@quarantine_group.command("list")
@click.option("--source", help="Only this source (by name).")
@click.option("--file", "file_name", help="Only records from this file (e.g. users.csv).")
@click.option("--reason", help="Only this reason (e.g. unknown_student, bad_encoding).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout, for a spreadsheet.")
@click.option("--limit", default=500, show_default=True, type=click.IntRange(1))
@click.pass_context
def quarantine_list(
    ctx: click.Context,
    source: str | None,
    file_name: str | None,
    reason: str | None,
    as_csv: bool,
    limit: int,
) -> None:
    """List quarantined records (newest problems last)."""
    import csv as csv_module

    from sqlalchemy import or_, select

    from service.models import QuarantinedRecord as Q

    engine = open_engine(_settings(ctx.find_root()))
    q = select(Q.id, Q.source, Q.entity, Q.location, Q.reason, Q.record_key, Q.times_seen,
               Q.last_seen, Q.detail).order_by(Q.id)  # fmt: skip
    if source:
        q = q.where(Q.source == source)
    if reason:
        q = q.where(Q.reason == reason)
    if file_name:
        q = q.where(or_(Q.location == file_name, Q.location.like(f"{file_name}:%")))
    with engine.connect() as conn:
        rows = conn.execute(q.limit(limit)).all()
    columns = ["id", "source", "entity", "location", "reason", "record_key", "times_seen",
               "last_seen", "detail"]  # fmt: skip
    if as_csv:
        writer = csv_module.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return
    table = Table(title=f"Quarantine ({len(rows):,} shown)")
    for col in columns:
        if col != "last_seen":
            table.add_column(col, overflow="fold")
    for row in rows:
        values = [str(v) if v is not None else "" for i, v in enumerate(row) if i != 7]
        table.add_row(*(escape(v) for v in values))
    console.print(table)
    if len(rows) == limit:
        console.print(f"(first {limit:,}; narrow with --source, --file, --reason or --limit)")


@quarantine_group.command("show")
@click.argument("record_id", type=int)
@click.pass_context
def quarantine_show(ctx: click.Context, record_id: int) -> None:
    """One quarantined record: where, why, how often, and the record as it arrived."""
    import json

    from sqlalchemy import select

    from service.models import QuarantinedRecord as Q

    engine = open_engine(_settings(ctx.find_root()))
    with engine.connect() as conn:
        row = conn.execute(select(Q).where(Q.id == record_id)).mappings().first()
    if row is None:
        console.print(f"[red]No quarantined record {record_id}.[/]")
        sys.exit(2)
    for key in ("id", "source", "entity", "location", "reason", "detail", "record_key",
                "times_seen", "first_seen", "last_seen"):  # fmt: skip
        console.print(f"{key}: {escape(str(row[key]))}", soft_wrap=True)
    console.print("record:")
    console.print(json.dumps(row["payload"], indent=2, ensure_ascii=False), markup=False)


@main.command()
@click.option("--interval", type=float, help="Seconds between passes (default: the config's).")
@click.option("--once", is_flag=True, help="One pass over the due items, then exit.")
@click.pass_context
def worker(ctx: click.Context, interval: float | None, once: bool) -> None:
    """Place referrals on cases and deliver the outbox continuously, and run jobs requested
    through the API. Run as many as you like on PostgreSQL: they share the work through fenced
    claims and never deliver an item (or run a requested job) twice. SIGTERM or Ctrl-C: the
    item in hand is finished and the rest of the batch given back."""
    import threading

    from service.roles import WorkerLoop, stop_on_signals

    settings = _settings(ctx)
    engine = _engine(settings)
    stop = threading.Event()
    stop_on_signals(stop)
    pause = interval if interval is not None else settings.schedules.dispatch_interval_seconds

    def report(r: DispatchReport) -> None:
        if r.delivered or r.dead or r.needs_review:
            console.print(
                f"delivered {r.delivered}, retried {r.retried}, dead {r.dead}, "
                f"needs review {r.needs_review}"
            )

    def jobs(ran: int) -> None:
        console.print(f"ran {ran} requested job(s)")

    WorkerLoop(engine, settings, pause, stop, on_pass=report, on_jobs=jobs).run(once=once)


@main.command()
@click.pass_context
def scheduler(ctx: click.Context) -> None:
    """Run the schedules (sync, evaluate, follow-ups, digests, retention, dispatch) until stopped
    (SIGTERM, Ctrl-C)."""
    from service.roles import run_scheduler_role

    settings = _settings(ctx)
    if not run_scheduler_role(_engine(settings), settings):
        sys.exit(1)


access_log_option = click.option(
    "--access-log", envvar="CASEBRIDGE_ACCESS_LOG", default="json", show_default=True,
    type=click.Choice(["json", "off"]), help="Access log on stdout as JSON lines, or none.",
)  # fmt: skip


@main.command()
@click.option(
    "--bind",
    multiple=True,
    envvar="CASEBRIDGE_BIND",
    default=["127.0.0.1:8000"],
    show_default=True,
    help="HOST:PORT to listen on (repeatable; or $CASEBRIDGE_BIND).",
)
@click.option(
    "--workers",
    envvar="WEB_CONCURRENCY",
    default=2,
    show_default=True,
    type=click.IntRange(1),
    help="gunicorn worker processes (or $WEB_CONCURRENCY).",
)
@click.option(
    "--threads",
    envvar="CASEBRIDGE_THREADS",
    default=4,
    show_default=True,
    type=click.IntRange(1),
    help="Threads per worker (or $CASEBRIDGE_THREADS).",
)
@click.option(
    "--timeout",
    envvar="CASEBRIDGE_TIMEOUT",
    default=30,
    show_default=True,
    type=click.IntRange(1),
    help="Seconds before a stuck worker is restarted.",
)
@click.option(
    "--graceful-timeout",
    default=20,
    show_default=True,
    type=click.IntRange(1),
    help="Seconds requests in flight get to finish on SIGTERM.",
)
@click.option(
    "--keep-alive",
    default=5,
    show_default=True,
    type=click.IntRange(0),
    help="Seconds an idle connection stays open (above the load balancer's).",
)
@access_log_option
@click.pass_context
def serve(
    ctx: click.Context, bind: tuple[str, ...], workers: int, threads: int, timeout: int,
    graceful_timeout: int, keep_alive: int, access_log: str,
) -> None:  # fmt: skip
    """The HTTP API under gunicorn (webhooks, /healthz, /readyz). Refuses to start when the
    database is behind the code: run `casebridge db upgrade` first."""
    from service.api import create_app
    from service.serve import ServeOptions
    from service.serve import serve as run_gunicorn

    settings = _settings(ctx)
    engine = _engine(settings)
    options = ServeOptions(bind, workers, threads, timeout, graceful_timeout, keep_alive,
                           access_log)  # fmt: skip
    run_gunicorn(create_app(settings, engine), engine, options)


@main.command("all-in-one")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the API listens on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="The API's port (0: any free port, printed at start).",
)
@click.option("--upgrade", is_flag=True, help="Create or migrate the schema first (evaluation).")
@access_log_option
@click.option(
    "--shutdown-timeout",
    default=25.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds a stop waits for requests, the item in hand and a running job.",
)
@click.pass_context
def all_in_one(
    ctx: click.Context, host: str, port: int, upgrade: bool, access_log: str,
    shutdown_timeout: float,
) -> None:  # fmt: skip
    """The API, an outbox worker and the scheduler in one process: the embedded SQLite setup
    for a small district or an evaluation. SIGTERM or Ctrl-C stops all three cleanly."""
    from service.api import create_app
    from service.embedded import AllInOne

    settings = _settings(ctx)
    engine = _engine(settings, upgrade=upgrade)
    app = create_app(settings, engine)

    def announce(url: str) -> None:
        click.echo(f"casebridge all-in-one: API on {url}, outbox worker and scheduler running")

    code = AllInOne(engine, settings, app, host, port, access_log, shutdown_timeout).run(announce)
    if code == 0:
        click.echo("casebridge all-in-one: stopped cleanly")
    sys.exit(code)


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
    refused: list[str] = []
    phones = 0
    for report in reports:
        if report.error:
            table.add_row(report.source, "[red]failed[/]", "", "", "", "", "", report.error)
            continue
        for entity, s in report.entities.items():
            q = ", ".join(f"{k} {v}" for k, v in sorted(s.quarantined.items())) or "0"
            name = f"[red]{entity} (refused)[/]" if s.refused else entity
            table.add_row(
                report.source, name, f"{s.read:,}", f"{s.inserted:,}", f"{s.updated:,}",
                f"{s.deactivated:,}", f"{s.unchanged:,}", q,
            )  # fmt: skip
            # Guardians and links counted apart from the students that share their file.
            for tname, (ins, upd, deact) in s.tables.items():
                if tname in SECONDARY_TABLES:
                    table.add_row(
                        "", f"  {SECONDARY_TABLES[tname]}", "", f"{ins:,}", f"{upd:,}",
                        f"{deact:,}", "", "",
                    )  # fmt: skip
            problems += [p for p in s.problems if not (s.refused and p in s.refused)]
            refused += [f"{report.source}: {s.refused}"] if s.refused else []
            phones += s.unusable_phones
    console.print(table)
    for p in problems:
        console.print(f"[yellow]problem:[/] {escape(p)}", soft_wrap=True)
    for r in refused:
        console.print(f"[red]refused:[/] {escape(r)}", soft_wrap=True)
    if phones:
        console.print(
            f"{phones:,} contacts have a phone field that is not a usable number (no textable "
            "number; kept as contacts.phone_issue)"
        )
    held = sum(sum(r.quarantined().values()) for r in reports)
    if held:
        console.print(
            f"{held:,} records quarantined this run: `casebridge quarantine list` lists them "
            "(--source, --file, --reason, --csv), `casebridge quarantine show ID` shows one."
        )


SECONDARY_TABLES = {"contacts": "guardians (contacts)", "student_contacts": "guardian links"}


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
    # Unknown is not zero: a school without a calendar leaves its students' attendance unknown.
    for (school, why), n in sorted(r.unknown_attendance.items()):
        table.add_row(f"attendance unknown at {school or '(no school)'} ({why})", f"{n:,}")
    for rule, n in sorted(r.unknown_by_rule.items()):
        table.add_row(f"rule {rule} could not judge (unknown indicator)", f"{n:,}")
    console.print(table)
    for warning in r.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


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


@main.group("resources")
def resources_group() -> None:
    """Community resources (an Open Referral HSDS 3.0 directory)."""


@resources_group.command("import")
@click.argument("source", required=False)
@click.pass_context
def resources_import(ctx: click.Context, source: str | None) -> None:
    """Import SOURCE (a JSON file, a CSV package folder or .zip, or a URL); default: the
    configured `resource_directory.url`. Updates in place, retires vanished services, and
    quarantines records that break the rules, with the reason."""
    from service.resources import import_directory

    settings = _settings(ctx.find_root())
    engine = _engine(settings)
    try:
        report = import_directory(engine, settings, source)
    except (OSError, ValueError) as exc:  # unreadable file, bad JSON, HTTP error
        console.print(f"[bold red]cannot read {escape(str(source))}: {escape(str(exc))}[/]")
        sys.exit(1)
    table = Table(title="Resource directory import")
    table.add_column("measure")
    table.add_column("count", justify="right")
    for label, value in (
        ("services read", report.read), ("inserted", report.inserted),
        ("updated in place", report.updated), ("unchanged", report.unchanged),
        ("retired (vanished)", report.retired), ("quarantined", len(report.quarantined)),
        ("without a mapped category", report.uncategorised),
    ):  # fmt: skip
        table.add_row(label, str(value))
    console.print(table)
    for record_id, reason in report.quarantined:
        console.print(f"[yellow]quarantined[/] {escape(str(record_id))}: {escape(reason)}")


@main.group("retention")
def retention_group() -> None:
    """Purge personal detail past its retention period (`retention:` in the configuration)."""


@retention_group.command("run")
@click.option("--dry-run", is_flag=True, help="Count what would be purged; change nothing.")
@click.pass_context
def retention_run(ctx: click.Context, dry_run: bool) -> None:
    """Blank old quarantine payloads and message bodies, delete cases closed long ago. The
    record of disclosures and consent evidence are kept. The scheduler runs it daily."""
    from service.retention import CATEGORIES, run_retention

    settings = _settings(ctx.find_root())
    report = run_retention(_engine(settings), settings, dry_run=dry_run)
    verb = "would purge" if dry_run else "purged"
    table = Table(title=f"Retention ({'dry run' if dry_run else 'done'})")
    for col in ("category", "older than", "what", verb):
        table.add_column(col, justify="right" if col == verb else "left")
    for category in CATEGORIES:
        before = report.cutoffs.get(category)
        if before is None:
            table.add_row(category, "kept forever", "", "")
            continue
        for n, ((cat, what), rows) in enumerate(
            (k, v) for k, v in report.counts.items() if k[0] == category
        ):
            table.add_row(cat if n == 0 else "", f"{before:%Y-%m-%d}" if n == 0 else "", what,
                          str(rows))  # fmt: skip
    for what, rows in report.kept.items():
        table.add_row("kept", "never purged", what, str(rows))
    console.print(table)
    if report.cases_waiting:
        console.print(
            f"{report.cases_waiting} closed case(s) wait for an outbox item a person must "
            "settle (`casebridge outbox list --status needs_review`)."
        )
    if dry_run:
        console.print("[yellow]Dry run: nothing was purged.[/]")


@main.command("export-disclosures")
@click.option("--student", "student", required=True, help="The student's id or student number.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv",
              show_default=True)  # fmt: skip
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here instead of standard output.")  # fmt: skip
@click.pass_context
def export_disclosures_cmd(ctx: click.Context, student: str, fmt: str, out: Path | None) -> None:
    """Every disclosure of a student's records (34 CFR 99.32), for a parent's request: when,
    to whom, what categories, for what and on which basis, and the case."""
    from service.clock import utcnow
    from service.disclosure_export import export_disclosures, write_csv, write_json

    settings = _settings(ctx.find_root())
    errors = Console(stderr=True, highlight=False)
    try:
        export = export_disclosures(_engine(settings), student, settings.district.timezone)
    except LookupError as exc:
        errors.print(f"[red]{escape(str(exc.args[0]))}[/]", soft_wrap=True)
        sys.exit(2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
    fh = out.open("w", encoding="utf-8", newline="") if out else sys.stdout
    try:
        if fmt == "csv":
            write_csv(export, fh)
        else:
            write_json(export, fh, utcnow())
    finally:
        if out:
            fh.close()
    where = str(out) if out else "standard output"
    errors.print(f"{len(export.rows)} disclosures of student {export.student_id} written to "
                 f"{escape(where)}", soft_wrap=True)  # fmt: skip


from service.cli_tokens import token_group  # noqa: E402  (registered after `main` exists)

main.add_command(token_group)


if __name__ == "__main__":  # pragma: no cover  (last: every command above is registered)
    main()

"""`casebridge token create|list|revoke`: API tokens for callers of the HTTP API."""

from __future__ import annotations

import sys
from datetime import timedelta

import click
from rich.table import Table

from service.api.auth import SCOPES, create_token, list_tokens, revoke_token


@click.group("token")
def token_group() -> None:
    """API tokens: each has scopes and may be limited to schools. Only a digest is stored."""


@token_group.command("create")
@click.option("--name", required=True, help="Who or what uses it (e.g. 'referral form').")
@click.option(
    "--scope", "scopes", multiple=True, required=True, type=click.Choice(SCOPES),
    help="Repeat for several scopes.",
)  # fmt: skip
@click.option("--school", "schools", multiple=True, help="Limit to this school (repeatable).")
@click.option("--expires-days", type=click.IntRange(1), help="Expire after this many days.")
@click.pass_context
def token_create(
    ctx: click.Context,
    name: str,
    scopes: tuple[str, ...],
    schools: tuple[str, ...],
    expires_days: int | None,
) -> None:
    """Create a token and print it once: it cannot be shown again."""
    from service.cli import _engine, _settings, console

    engine = _engine(_settings(ctx))
    expires = timedelta(days=expires_days) if expires_days else None
    token_id, token = create_token(engine, name, scopes, schools or None, expires)
    console.print(f"token {token_id} ({name}): scopes {', '.join(sorted(scopes))}", style="green")
    console.print("Store it now; it is not kept and cannot be shown again:", style="bold")
    click.echo(token)


@token_group.command("list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """Every token with its scopes, schools and use; never the token itself."""
    from service.cli import _engine, _settings, console

    table = Table()
    for column in ("id", "name", "prefix", "scopes", "schools", "created", "last used", "state"):
        table.add_column(column)
    for t in list_tokens(_engine(_settings(ctx))):
        state = "revoked" if t.revoked_at else "active"
        used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else ""
        schools = " ".join(t.schools) if t.schools else "all"
        table.add_row(
            str(t.id), t.name, t.prefix + "…", " ".join(t.scopes), schools,
            f"{t.created_at:%Y-%m-%d}", used, state,
        )  # fmt: skip
    console.print(table)


@token_group.command("revoke")
@click.argument("token_id", type=int)
@click.pass_context
def token_revoke(ctx: click.Context, token_id: int) -> None:
    """Revoke a token at once: its next request gets 401."""
    from service.cli import _engine, _settings, console

    if not revoke_token(_engine(_settings(ctx)), token_id):
        console.print(f"[red]No active token {token_id}.[/]")
        sys.exit(2)
    console.print(f"token {token_id} revoked", style="green")

"""`lakeward token create | list | revoke`: the API's named tokens.

They live as SHA-256 hashes in LAKEWARD_API_TOKENS_FILE (default .lakeward/api-tokens.json), which
the API re-reads on change: a new token works and a revoked one is refused on the next request.
Run these where the API's files are (the same machine and working directory, or a shared volume).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lakeward.settings import Settings
from lakeward.tokens import Role, TokenError, TokenStore

__all__ = ["app"]

app = typer.Typer(help="Manage API tokens (roles viewer, operator, admin).", no_args_is_help=True)
console = Console()
err = Console(stderr=True, soft_wrap=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _store() -> TokenStore:
    return TokenStore(Settings().api_tokens_file)


def _fail(exc: TokenError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(1)


@app.command()
def create(
    name: Annotated[str, typer.Option(help="Who uses it, e.g. ci (the audit log shows it).")],
    role: Annotated[Role, typer.Option(help="viewer reads; operator also drives; admin all.")],
    as_json: JsonOption = False,
) -> None:
    """Make a token; its value is printed once and never stored."""
    try:
        record, token = _store().create(name, role)
    except TokenError as exc:
        raise _fail(exc) from None
    if as_json:
        body = {"name": record.name, "role": record.role.value, "id": record.id, "token": token}
        sys.stdout.write(json.dumps(body) + "\n")
        return
    console.print(f"token [bold]{escape(record.name)}[/] ({record.role.value}), id {record.id}:")
    console.print(token, soft_wrap=True, highlight=False)
    err.print("Store it now: only its hash is kept. Send it as 'Authorization: Bearer <token>'.")


@app.command("list")
def list_(
    revoked: Annotated[bool, typer.Option("--revoked", help="Include revoked tokens.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List tokens (names, roles, dates; never values or hashes)."""
    try:
        records = [r for r in _store().records() if revoked or r.is_active]
    except TokenError as exc:
        raise _fail(exc) from None
    rows = [
        {"name": r.name, "role": r.role.value, "id": r.id, "created_at": r.created_at,
         "revoked_at": r.revoked_at}
        for r in records
    ]  # fmt: skip
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    table = Table("name", "role", "id", "created", "revoked")
    for row in rows:
        table.add_row(*(escape(str(row[k] or "-")) for k in
                        ("name", "role", "id", "created_at", "revoked_at")))  # fmt: skip
    console.print(table)


@app.command()
def revoke(name: Annotated[str, typer.Argument(help="The token's name (or id).")]) -> None:
    """Revoke a token: the API refuses it from its next request on."""
    try:
        record = _store().revoke(name)
    except TokenError as exc:
        raise _fail(exc) from None
    console.print(f"revoked token [bold]{escape(record.name)}[/] ({record.role.value})")

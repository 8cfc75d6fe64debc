"""`lakeward generate`: write a reproducible workload into a MongoDB collection."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from lakeward.generate import (
    MAX_DRIFT_STAGE,
    Batch,
    GenerateError,
    GenerateResult,
    Generator,
    IdType,
    OpMix,
    open_collection,
    pacing_batch_size,
    parse_ops,
    parse_rate,
    redact_uri,
    run,
)
from lakeward.settings import StackSettings

__all__ = ["generate"]

T = TypeVar("T")

console = Console()
err = Console(stderr=True)


def generate(
    uri: Annotated[
        str | None,
        typer.Option(
            envvar="LAKEWARD_MONGO_URI",
            help="MongoDB URI (a replica set for --transactions). Default: the local stack's.",
            show_default=False,
        ),
    ] = None,
    db: Annotated[str, typer.Option("--db", help="Database name.")] = "shop",
    collection: Annotated[str, typer.Option(help="Collection name.")] = "orders",
    ops: Annotated[
        str,
        typer.Option(help="Operation mix in percent, kinds insert, update, replace, delete."),
    ] = "insert:70,update:25,delete:5",
    rate: Annotated[
        str, typer.Option(help="Target operations per second: 5000/s, 300/min, or unlimited.")
    ] = "unlimited",
    docs: Annotated[
        int, typer.Option(min=0, help="Number of operations to perform (after --initial).")
    ] = 10_000,
    initial: Annotated[
        int, typer.Option(min=0, help="Documents bulk inserted first, not rate limited.")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Same seed and options, same operations.")] = 0,
    id_type: Annotated[IdType, typer.Option(help="Type of _id values.")] = IdType.OBJECTID,
    transactions: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fraction of batches written in a transaction."),
    ] = 0.0,
    drift: Annotated[
        bool, typer.Option(help="Let the schema drift: new fields, deeper nesting, type changes.")
    ] = False,
    drift_every: Annotated[
        int | None,
        typer.Option(
            min=1, help="Operations per drift stage. Default: --docs / 5.", show_default=False
        ),
    ] = None,
    batch: Annotated[
        int, typer.Option(min=1, help="Operations per bulk write (capped at rate/20 when paced).")
    ] = 500,
    pool_size: Annotated[
        int, typer.Option(min=1, help="Known ids kept in memory for updates and deletes.")
    ] = 100_000,
    extreme_dates: Annotated[
        bool, typer.Option(help="Also write dates outside years 1..9999 (DatetimeMS).")
    ] = False,
    drop: Annotated[bool, typer.Option(help="Drop the collection first.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Write realistic documents into a MongoDB collection at a chosen rate and operation mix."""
    mix = _parse(parse_ops, ops, "--ops")
    per_second = _parse(parse_rate, rate, "--rate")
    batch_size = pacing_batch_size(per_second, batch)
    stage_length = drift_every or max(1, docs // (MAX_DRIFT_STAGE + 1))
    generator = Generator(
        seed,
        mix=mix,
        id_type=id_type,
        drift=drift,
        drift_every=stage_length,
        pool_size=pool_size,
        extreme_dates=extreme_dates,
    )
    target = uri or StackSettings().mongo_uri
    batches = generator.batches(
        docs, initial=initial, batch_size=batch_size, transactions=transactions
    )
    try:
        client, coll = open_collection(target, db, collection, drop=drop)
        with client:
            if as_json:
                result = run(coll, batches, rate=per_second)
            else:
                result = _run_with_progress(coll, batches, per_second, initial + docs)
    except GenerateError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None

    if as_json:
        summary = {
            "uri": redact_uri(target),
            "database": db,
            "collection": collection,
            "seed": seed,
            "ops": str(mix),
            "target_rate": per_second,
            "drift_stage": generator.drift_stage,
            **result.as_dict(),
        }
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(result, mix, per_second, f"{db}.{collection}")
    if result.errors:
        err.print(
            f"[bold red]error:[/] {result.errors} writes were rejected; first: "
            f"{result.error_samples[0] if result.error_samples else 'unknown'}",
            highlight=False,
        )
        raise typer.Exit(1)


def _parse(parser: Callable[[str], T], value: str, option: str) -> T:
    """Run `parser`, turning its ValueError into one usage-error line naming the option."""
    try:
        return parser(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{option}'") from None


def _run_with_progress(
    coll: Any, batches: Iterator[Batch], rate: float | None, total: int
) -> GenerateResult:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>9} ops/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    )
    task = progress.add_task("writing", total=total, rate="-")
    started = time.monotonic()

    def advance(batch: Batch, result: GenerateResult) -> None:
        elapsed = max(time.monotonic() - started, 1e-9)
        done = result.initial + result.operations
        progress.update(
            task,
            advance=len(batch.operations),
            description="initial" if batch.initial else "writing",
            rate=f"{done / elapsed:,.0f}",
        )

    with progress:
        return run(coll, batches, rate=rate, on_batch=advance)


def _print_summary(result: GenerateResult, mix: OpMix, rate: float | None, target: str) -> None:
    table = Table(title=f"generated into {target}", show_header=True)
    table.add_column("operation")
    table.add_column("sent", justify="right")
    table.add_column("requested %", justify="right")
    weights = {str(k): w for k, w in mix.weights().items()}
    if result.initial:
        table.add_row("initial insert", f"{result.initial:,}", "")
    for kind, count in result.counts.items():
        table.add_row(kind, f"{count:,}", f"{weights[kind]}")
    console.print(table)
    target_rate = "unlimited" if rate is None else f"{rate:,.0f}/s"
    console.print(
        f"acknowledged: {result.inserted:,} inserted, {result.matched:,} matched "
        f"({result.modified:,} modified), {result.deleted:,} deleted"
    )
    console.print(
        f"batches: {result.batches:,} ({result.transactions:,} in transactions), "
        f"errors: {result.errors:,}"
    )
    console.print(
        f"elapsed: {result.elapsed_s:.1f}s, achieved rate: {result.rate:,.0f} ops/s "
        f"(target {target_rate})"
    )

"""`unirec churn report`: the last merged churn windows, read from Redis, and the table size a target
collision rate needs. `unirec churn lookups`: a multi-size schema whose per-feature lookups are
allocated from those windows' distinct IDs under a total width budget (`embedding.multisize`).

Run: `unirec churn report --last 5 --target-collision 0.05` (Redis from `UNIREC_REDIS_URL`, key prefix
from `UNIREC_CHURN_KEY_PREFIX`);
`unirec churn lookups --schema movielens --total-width 96 --embedding-dim 8 --write ml-multi.yaml`.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import orjson
import redis
import typer
import yaml
from rich.console import Console
from rich.table import Table

from core.settings import CommonSettings
from embedding.multisize import MAX_LOOKUPS, multisize_schema, schema_cardinalities
from embedding.schema import FeatureSchema, load_schema
from trainer.churn.exchange import read_summaries
from trainer.churn.load import collision_rate, table_rows_for
from trainer.churn.settings import ChurnSettings

churn_app = typer.Typer(help="Vocabulary churn of the features sharing the unified table.", no_args_is_help=True)


@churn_app.callback()
def _group() -> None:
    """Vocabulary churn of the features sharing the unified table (numbers merged over ranks, from Redis)."""


def sizing(summary: dict[str, Any], target: float) -> dict[str, Any]:
    """Rows the unified table needs so that every feature's expected collision rate is <= `target`,
    given the distinct IDs of one merged window (balls into bins, see trainer/churn/load.py)."""
    features = summary["features"]
    balls = sum((f["distinct"] or 0.0) * f["lookups"] for f in features.values())
    rows = int(summary["table_rows"])
    per_feature = {
        name: {
            "lookups": f["lookups"],
            "distinct": f["distinct"] or 0.0,
            "collision_rate": collision_rate(rows, balls, f["lookups"]),
            "rows_needed": table_rows_for(target, balls, f["lookups"]),
        }
        for name, f in features.items()
    }
    needed = max((f["rows_needed"] for f in per_feature.values()), default=1)
    return {
        "window_start_ms": summary["window_start_ms"],
        "target_collision": target,
        "table_rows": rows,
        "balls": balls,
        "rows_needed": needed,
        "features": per_feature,
    }


def window_cardinalities(summaries: list[dict[str, Any]]) -> dict[str, float]:
    """Per feature, the mean distinct IDs per window over `summaries` (windows without a number skipped)."""
    seen: dict[str, list[float]] = {}
    for summary in summaries:
        for name, f in summary["features"].items():
            if f.get("distinct") is not None:
                seen.setdefault(name, []).append(float(f["distinct"]))
    return {name: sum(v) / len(v) for name, v in seen.items() if v}


def lookup_plan(
    schema: FeatureSchema,
    summaries: list[dict[str, Any]] | None,
    total_width: int,
    embedding_dim: int,
    max_lookups: int = MAX_LOOKUPS,
) -> tuple[FeatureSchema, dict[str, float]]:
    """The multi-size schema for a total width budget, with lookups allocated from the churn windows'
    distinct IDs (features the windows do not name, or no windows at all: the schema's vocab_size),
    and the cardinalities used."""
    counts = schema_cardinalities(schema) | window_cardinalities(summaries or [])
    counts = {name: counts[name] for name in schema.sparse_names}
    return multisize_schema(schema, total_width, embedding_dim, counts, max_lookups), counts


def _fmt(value: Any, kind: str = "int") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    return f"{value:.3g}"


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def render(summaries: list[dict[str, Any]], target: float, features: list[str] | None, console: Console) -> None:
    table = Table(title="vocabulary churn per window (event time, UTC; merged over ranks)")
    for column in ("window", "feature", "distinct", "new", "new/s", "vanished", "jaccard", "occupied rows",
                   "collisions", "stale", "median age", "survival", "ranks"):
        table.add_column(column, justify="left" if column in ("window", "feature") else "right")
    for s in summaries:
        ranks = f"{s['ranks_merged']}/{s['world_size']}" + ("" if s["complete"] else " partial")
        for name, f in s["features"].items():
            if features and name not in features:
                continue
            age = f["median_age_windows"]
            table.add_row(
                _when(s["window_start_ms"]), name, _fmt(f["distinct"]), _fmt(f["new"]), _fmt(f["new_rate"], "g"),
                _fmt(f["vanished"]), _fmt(f["jaccard"], "g"), _fmt(f["occupied_rows"]),
                _fmt(f["collision_rate"], "pct"), _fmt(f["stale_share"], "pct"),
                "-" if age is None else f"{age} w", _fmt(f["survival"], "pct"), ranks,
            )
    console.print(table)
    size = sizing(summaries[-1], target)
    sized = Table(title=f"table size for collision rate <= {target:g} (window {_when(size['window_start_ms'])})")
    for column in ("feature", "lookups", "distinct", "collisions now", "rows needed"):
        sized.add_column(column, justify="left" if column == "feature" else "right")
    for name, f in size["features"].items():
        if features and name not in features:
            continue
        sized.add_row(name, str(f["lookups"]), _fmt(f["distinct"]), _fmt(f["collision_rate"], "pct"),
                      _fmt(f["rows_needed"]))
    console.print(sized)
    ratio = size["rows_needed"] / size["table_rows"]
    console.print(f"unified table: {size['table_rows']:,} rows now, {size['rows_needed']:,} needed "
                  f"({ratio:.2f}x) for every feature's collision rate <= {target:g}")


def _windows_or_exit(redis_url: str | None, key_prefix: str | None, last: int, when_empty: str) -> list[dict[str, Any]]:
    """The last churn window summaries in Redis (URL and prefix default to the settings), or exit 1 with
    a message when Redis cannot be read or holds none (`when_empty` ends that message)."""
    url = redis_url or CommonSettings().redis_url
    prefix = key_prefix or ChurnSettings().key_prefix
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        summaries = read_summaries(client, prefix, last)
    except (redis.RedisError, OSError) as exc:
        Console(stderr=True).print(f"[red]error:[/] cannot read churn windows from Redis at {url}: {exc}")
        raise typer.Exit(1) from exc
    finally:
        client.close()
    if not summaries:
        Console(stderr=True).print(f"no churn windows under {prefix}:@windows in Redis at {url}{when_empty}")
        raise typer.Exit(1)
    return summaries


@churn_app.command("report")
def report(
    last: int = typer.Option(5, min=1, help="How many of the latest merged windows to show."),
    target_collision: float = typer.Option(0.05, min=1e-6, max=0.999, help="Collision rate to size the table for."),
    feature: list[str] = typer.Option(None, help="Only these features (repeatable)."),
    redis_url: str = typer.Option(None, help="Redis URL; default UNIREC_REDIS_URL."),
    key_prefix: str = typer.Option(None, help="Redis key prefix; default UNIREC_CHURN_KEY_PREFIX."),
    as_json: bool = typer.Option(False, "--json", help="Print the summaries and the sizing as JSON."),
) -> None:
    """Show the last windows' churn per feature and the table size that keeps collisions under a target."""
    console = Console()
    summaries = _windows_or_exit(redis_url, key_prefix, last, when_empty=" yet")
    if as_json:
        doc = {"windows": summaries, "sizing": sizing(summaries[-1], target_collision)}
        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    render(summaries, target_collision, feature or None, console)


@churn_app.command("lookups")
def lookups(
    schema: str = typer.Option(..., help="The feature schema: a shipped name or a YAML path."),
    total_width: int = typer.Option(..., min=1, help="Total embedding width per example (sum of feature widths)."),
    embedding_dim: int = typer.Option(None, min=1, help="Row width d of the unified table; default the schema's."),
    max_lookups: int = typer.Option(MAX_LOOKUPS, min=1, help="Most lookups one feature may get."),
    last: int = typer.Option(5, min=1, help="Average the distinct IDs of this many latest windows."),
    from_schema: bool = typer.Option(False, "--from-schema", help="Use the schema's vocab_size, not Redis."),
    write: Path = typer.Option(None, help="Write the multi-size schema as YAML here."),
    redis_url: str = typer.Option(None, help="Redis URL; default UNIREC_REDIS_URL."),
    key_prefix: str = typer.Option(None, help="Redis key prefix; default UNIREC_CHURN_KEY_PREFIX."),
) -> None:
    """Allocate per-feature lookups (multi-size unified embedding) from the churn windows' distinct IDs."""
    base = load_schema(schema)
    summaries: list[dict[str, Any]] = []
    if not from_schema:
        summaries = _windows_or_exit(redis_url, key_prefix, last, when_empty="; try --from-schema")
    try:
        multi, counts = lookup_plan(base, summaries, total_width, embedding_dim or base.embedding_dim, max_lookups)
    except ValueError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    table = Table(title=f"lookups for total width {total_width} (rows of width {multi.embedding_dim})")
    for column in ("feature", "cardinality", "lookups", "width"):
        table.add_column(column, justify="left" if column == "feature" else "right")
    for spec in multi.sparse:
        table.add_row(spec.name, _fmt(counts[spec.name]), str(spec.lookups), str(multi.width(spec.name)))
    Console().print(table)
    if write is not None:
        write.write_text(yaml.safe_dump(multi.model_dump(mode="json", exclude_none=True), sort_keys=False))
        Console().print(f"wrote {write}")

"""``monmouth rag ...``: search the knowledge base and ingest documents from the command line.

Both commands open the sidecar offline (``monmouth.app.open_app``: config, database, plugins started), so they work
whether or not a sidecar is running on the same database (SQLite WAL; vector writes are guarded either way).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .search import MODES

FILTER_KEYS = ("block_from", "block_to", "time_from", "time_to", "address", "role", "intent", "token", "kind",
               "doc_id")
_LIST_KEYS = {"role", "intent", "token", "kind"}
_INT_KEYS = {"block_from", "block_to", "time_from", "time_to"}

#: How commands open the sidecar; tests replace it. Returns an object with ``.host`` and ``.close()``.
Opener = Callable[[Path | None], Any]


def _default_opener(config_path: Path | None) -> Any:
    from monmouth.app import open_app

    return open_app(config_path)


opener: Opener = _default_opener


@contextmanager
def _rag(config_path: Path | None) -> Iterator[Any]:
    app = opener(config_path)
    try:
        plugin = app.host.get("rag")
        if plugin is None:
            err = app.host.errors.get("rag")
            raise click.ClickException(f"the rag plugin is not running: {err}" if err else
                                       "the rag plugin is disabled (set plugins.rag.enabled = true)")
        yield plugin
    finally:
        app.close()


def parse_filters(items: tuple[str, ...]) -> dict[str, Any]:
    """``("intent=swap,transfer", "block_from=10")`` → ``{"intent": ["swap", "transfer"], "block_from": 10}``.

    Raises:
        click.BadParameter: not ``key=value``, or an unknown key (named).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise click.BadParameter(f"{item!r}: use key=value", param_hint="--filter")
        if key not in FILTER_KEYS:
            raise click.BadParameter(f"unknown filter {key!r} (known: {', '.join(FILTER_KEYS)})",
                                     param_hint="--filter")
        value = value.strip()
        if key in _LIST_KEYS:
            out[key] = [v.strip() for v in value.split(",") if v.strip()]
        elif key in _INT_KEYS and value.lstrip("-").isdigit():
            out[key] = int(value)
        else:
            out[key] = value
    return out


CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="config.toml to use (default: $MONMOUTH_CONFIG, else ./config.toml, else built-in defaults).")


@click.group("rag")
def rag_group() -> None:
    """Search chain data and documents; ingest documents."""


@rag_group.command("search")
@click.argument("query")
@click.option("--k", "k", type=click.IntRange(1, 100), default=10, show_default=True, help="Results wanted.")
@click.option("--mode", type=click.Choice(MODES), default=None, help="Default: plugins.rag.mode.")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help=f"Repeatable. Keys: {', '.join(FILTER_KEYS)}. Lists (intent, token, kind, role): "
                   "comma-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
@CONFIG_OPTION
def search_cmd(query: str, k: int, mode: str | None, filters: tuple[str, ...], as_json: bool,
               config_path: Path | None) -> None:
    """Search QUERY (hybrid by default) and print ranked, cited hits."""
    from pydantic import ValidationError

    from .api import SearchFilters

    if not query.strip():
        raise click.BadParameter("must not be empty", param_hint="QUERY")
    parsed = parse_filters(filters)
    try:
        f = SearchFilters(**parsed).to_filters()
    except ValidationError as e:
        first = e.errors()[0]
        raise click.BadParameter(f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}",
                                 param_hint="--filter") from None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--filter") from None
    with _rag(config_path) as plugin:
        hits = plugin.search(query, k, mode, f)
        if as_json:
            click.echo(json.dumps([h.to_json() for h in hits], indent=2))
            return
        if not hits:
            click.echo("no results")
        for i, h in enumerate(hits, start=1):
            first_line = h.text.split("\n", 1)[0]
            click.echo(f"{i:2d}. [{h.score:.4f}] {h.citation}\n    {first_line[:200]}")


@rag_group.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--id", "doc_id", default=None, help="Document id (one file only; default: the path).")
@click.option("--title", default=None, help="Title (one file only).")
@click.option("--kind", type=click.Choice(["document", "memory"]), default="document", show_default=True)
@click.option("--embed/--no-embed", default=True, show_default=True,
              help="Embed now (otherwise a running sidecar's worker embeds them).")
@CONFIG_OPTION
def ingest_cmd(paths: tuple[Path, ...], doc_id: str | None, title: str | None, kind: str, embed: bool,
               config_path: Path | None) -> None:
    """Ingest text and markdown files (directories recursively). Re-ingesting a path replaces that document."""
    from .documents import read_paths

    try:
        files = read_paths(list(paths))
    except FileNotFoundError as e:
        raise click.BadParameter(str(e), param_hint="PATHS") from None
    if (doc_id or title) and len(files) != 1:
        raise click.BadParameter("--id and --title need exactly one file", param_hint="--id")
    with _rag(config_path) as plugin:
        total = 0
        for path, text, md in files:
            if not text.strip():
                click.echo(f"skipped {path}: empty", err=True)
                continue
            res = plugin.add_document(doc_id or path, text, kind=kind, title=title or Path(path).name, markdown=md,
                                      meta={"source": path})
            total += res["chunks"]
            click.echo(f"{res['id']}: {res['chunks']} chunks" + (" (replaced)" if res["replaced"] else ""))
        if embed:
            plugin.drain()
        click.echo(f"ingested {len(files)} files, {total} chunks" + (", embedded" if embed else ""))

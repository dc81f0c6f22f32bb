"""``monmouth memory ...`` and ``monmouth checkpoint ...`` commands (added by ``monmouth_register_commands``).

Memory commands open the sidecar offline with ``monmouth.app.open_app`` (the memory plugin must be enabled in
the config); they may run while the sidecar runs (SQLite serialises the writes). ``checkpoint create|list|prune``
need only the config; ``checkpoint restore`` needs the sidecar stopped.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .errors import ArchiveError, MemoryRequestError

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="config.toml to use (default: $MONMOUTH_CONFIG, else ./config.toml, else built-in defaults).",
)


def _echo(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def memory_of(plugin: Any) -> Any:
    """The :class:`~monmouth_memory.core.Memory` of an enabled memory plugin object (module or instance)."""
    m = getattr(plugin, "memory", None)
    return m() if callable(m) else m


@contextlib.contextmanager
def open_memory(config_path: Path | None) -> Iterator[Any]:
    """Open the sidecar offline and yield its running Memory.

    Raises:
        click.ClickException: invalid config, or the memory plugin is not enabled.
    """
    from monmouth.app import open_app
    from monmouth.errors import MonmouthError

    try:
        app = open_app(config_path)
    except MonmouthError as e:
        raise click.ClickException(str(e)) from e
    try:
        plugin = app.host.get("memory")
        mem = memory_of(plugin) if plugin is not None else None
        if mem is None:
            err = app.host.errors.get("memory")
            raise click.ClickException("the memory plugin is not enabled in the config "
                                       "(set [plugins.memory] enabled = true)" + (f": {err}" if err else ""))
        yield mem
    finally:
        app.close()


def _run(fn: Any) -> None:
    try:
        _echo(fn())
    except MemoryRequestError as e:
        raise click.ClickException(f"{e.field}: {e.message}") from e


def _settings(config_path: Path | None) -> tuple[Any, Any]:
    from monmouth.app import load_settings
    from monmouth.errors import MonmouthError

    from .config import MemoryConfig

    try:
        settings, _ = load_settings(config_path)
    except MonmouthError as e:
        raise click.ClickException(str(e)) from e
    p = settings.plugins.get("memory")
    cfg = p.config if p is not None and p.config is not None else MemoryConfig()
    return settings, cfg


def _ckpt_dir(settings: Any, cfg: Any) -> Path:
    p = Path(cfg.checkpoint_dir).expanduser()
    base = Path.cwd() if settings.storage.is_postgres else Path(settings.storage.sqlite_path).resolve().parent
    return p if p.is_absolute() else base / p


def _sqlite_file(settings: Any) -> str:
    """The SQLite file a checkpoint copies or replaces.

    Raises:
        click.ClickException: the storage is PostgreSQL (naming ``storage.url`` and what to use instead).
    """
    if settings.storage.is_postgres:
        raise click.ClickException(
            "storage.url: checkpoints are copies of the SQLite file and do not exist on PostgreSQL; back the "
            "database up with the server's tools (pg_dump, base backups), or move an agent's memory with "
            "`monmouth memory export` / `monmouth memory import`")
    return str(settings.storage.sqlite_path)


def register(cli: click.Group) -> None:
    """Add the ``memory`` and ``checkpoint`` groups to the ``monmouth`` CLI."""
    from .fields import parse_address, parse_id

    @click.group("memory")
    def memory() -> None:
        """Per-agent memory: store, recall, prove, export, import, forget."""

    @memory.command("agents")
    @CONFIG_OPTION
    def agents(config_path: Path | None) -> None:
        """List registered agents with their item counts and current roots."""
        with open_memory(config_path) as m:
            _run(lambda: {"agents": m.agents()})

    @memory.command("register")
    @click.argument("address")
    @click.option("--label", default=None)
    @CONFIG_OPTION
    def register_(address: str, label: str | None, config_path: Path | None) -> None:
        """Register agent ADDRESS (creates its key)."""
        with open_memory(config_path) as m:
            _run(lambda: m.register(parse_address(address), label, "cli"))

    @memory.command("store")
    @click.argument("agent")
    @click.argument("content", required=False)
    @click.option("--kind", default="semantic", show_default=True)
    @click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Read the content (bytes) from a file instead.")
    @click.option("--key", default=None)
    @click.option("--tag", "tags", multiple=True)
    @click.option("--metadata", default=None, help="A JSON object.")
    @click.option("--ttl-seconds", type=int, default=None)
    @click.option("--ttl-blocks", type=int, default=None)
    @CONFIG_OPTION
    def store(agent: str, content: str | None, kind: str, file: Path | None, key: str | None, tags: tuple[str, ...],
              metadata: str | None, ttl_seconds: int | None, ttl_blocks: int | None, config_path: Path | None) -> None:
        """Store CONTENT (or --file, or stdin with '-') as a memory of AGENT."""
        data: str | bytes
        if file is not None:
            data = file.read_bytes()
        elif content == "-" or content is None:
            data = sys.stdin.read()
        else:
            data = content
        try:
            meta = json.loads(metadata) if metadata else None
        except ValueError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="--metadata") from e
        with open_memory(config_path) as m:
            _run(lambda: m.store(parse_address(agent), kind, data, key=key, tags=list(tags), metadata=meta,
                                 ttl_seconds=ttl_seconds, ttl_blocks=ttl_blocks))

    @memory.command("get")
    @click.argument("agent")
    @click.argument("item_id")
    @CONFIG_OPTION
    def get(agent: str, item_id: str, config_path: Path | None) -> None:
        """Show one item."""
        with open_memory(config_path) as m:
            _run(lambda: m.get(parse_address(agent), parse_id(item_id)))

    @memory.command("list")
    @click.argument("agent")
    @click.option("--kind", default=None)
    @click.option("--tag", "tags", multiple=True)
    @click.option("--limit", type=int, default=50, show_default=True)
    @CONFIG_OPTION
    def list_(agent: str, kind: str | None, tags: tuple[str, ...], limit: int, config_path: Path | None) -> None:
        """List items of AGENT, newest first."""
        with open_memory(config_path) as m:
            _run(lambda: {"items": m.list(parse_address(agent), kind=kind, tags=list(tags) or None, limit=limit)})

    @memory.command("update")
    @click.argument("agent")
    @click.argument("item_id")
    @click.option("--content", default=None)
    @click.option("--tag", "tags", multiple=True)
    @click.option("--metadata", default=None, help="A JSON object.")
    @CONFIG_OPTION
    def update(agent: str, item_id: str, content: str | None, tags: tuple[str, ...], metadata: str | None,
               config_path: Path | None) -> None:
        """Replace the content, tags or metadata of an item."""
        meta = json.loads(metadata) if metadata else None
        with open_memory(config_path) as m:
            _run(lambda: m.update(parse_address(agent), parse_id(item_id), content=content,
                                  tags=list(tags) if tags else None, metadata=meta))

    @memory.command("delete")
    @click.argument("agent")
    @click.argument("item_id")
    @CONFIG_OPTION
    def delete(agent: str, item_id: str, config_path: Path | None) -> None:
        """Delete one item (it leaves the agent's root at the next block)."""
        with open_memory(config_path) as m:
            _run(lambda: m.delete(parse_address(agent), parse_id(item_id)))

    @memory.command("recall")
    @click.argument("agent")
    @click.argument("query")
    @click.option("-k", type=int, default=10, show_default=True)
    @click.option("--kind", default=None)
    @click.option("--recency-weight", type=float, default=0.0, show_default=True)
    @CONFIG_OPTION
    def recall(agent: str, query: str, k: int, kind: str | None, recency_weight: float,
               config_path: Path | None) -> None:
        """Recall AGENT's items by meaning (rag embedder) or by words (FTS5)."""
        with open_memory(config_path) as m:
            _run(lambda: m.recall(parse_address(agent), query, k=k, kind=kind, recency_weight=recency_weight))

    @memory.command("root")
    @click.argument("agent", required=False)
    @click.option("--block", type=int, default=None)
    @CONFIG_OPTION
    def root(agent: str | None, block: int | None, config_path: Path | None) -> None:
        """The root of AGENT (or the global root) at --block (default: the head)."""
        with open_memory(config_path) as m:
            if agent:
                _run(lambda: m.agent_root(parse_address(agent), block, True))
            else:
                _run(lambda: m.global_root(block))

    @memory.command("proof")
    @click.argument("agent")
    @click.argument("item_id")
    @click.option("--block", type=int, default=None)
    @CONFIG_OPTION
    def proof(agent: str, item_id: str, block: int | None, config_path: Path | None) -> None:
        """The inclusion proof of an item under AGENT's root at --block."""
        with open_memory(config_path) as m:
            _run(lambda: m.proof(parse_address(agent), parse_id(item_id), block))

    @memory.command("forget")
    @click.argument("agent")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @CONFIG_OPTION
    def forget(agent: str, yes: bool, config_path: Path | None) -> None:
        """Forget AGENT for good: destroy its key and delete all its memory (irreversible)."""
        if not yes:
            click.confirm(f"Forget {agent} for good? This cannot be undone", abort=True)
        with open_memory(config_path) as m:
            _run(lambda: m.forget(parse_address(agent)))

    @memory.command("export")
    @click.argument("agent")
    @click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--block", type=int, default=None)
    @CONFIG_OPTION
    def export(agent: str, file: Path, block: int | None, config_path: Path | None) -> None:
        """Write AGENT's memory to FILE as a self-verifying archive (items, salts, root, proofs). It holds
        plaintext: protect it."""
        from .portable import export_agent

        with open_memory(config_path) as m:
            try:
                archive = export_agent(m, parse_address(agent), block)
            except MemoryRequestError as e:
                raise click.ClickException(f"{e.field}: {e.message}") from e
        file.write_text(json.dumps(archive))
        _echo({"file": str(file), "agent": archive["agent"], "block": archive["block"], "root": archive["root"],
               "items": len(archive["items"]), "withheld": len(archive["withheld"])})

    @memory.command("verify")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @CONFIG_OPTION
    def verify_(file: Path, config_path: Path | None) -> None:
        """Verify an archive offline (no sidecar needed; --config is accepted and ignored)."""
        from .portable import verify_archive

        try:
            _echo(verify_archive(json.loads(file.read_text())))
        except (ArchiveError, ValueError) as e:
            raise click.ClickException(f"archive refused: {e}") from e

    @memory.command("import")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @CONFIG_OPTION
    def import_(file: Path, config_path: Path | None) -> None:
        """Verify an archive (root, proofs, commitments) and import its items; refuses a tampered archive,
        naming the first bad item."""
        from .portable import import_archive

        try:
            archive = json.loads(file.read_text())
        except ValueError as e:
            raise click.ClickException(f"archive refused: not JSON ({e})") from e
        with open_memory(config_path) as m:
            try:
                _echo(import_archive(m, archive))
            except ArchiveError as e:
                raise click.ClickException(f"archive refused: {e}") from e

    cli.add_command(memory, "memory")

    @click.group("checkpoint")
    def checkpoint() -> None:
        """Consistent snapshots of the sidecar database (SQLite online backup)."""

    @checkpoint.command("create")
    @click.option("--name", default=None)
    @CONFIG_OPTION
    def ck_create(name: str | None, config_path: Path | None) -> None:
        """Take a checkpoint now (the sidecar may keep running)."""
        from . import checkpoint as ck

        settings, cfg = _settings(config_path)
        try:
            _echo(ck.create(_sqlite_file(settings), _ckpt_dir(settings, cfg), name=name,
                            config_hash=settings.digest()))
        except ck.CheckpointError as e:
            raise click.ClickException(str(e)) from e

    @checkpoint.command("list")
    @CONFIG_OPTION
    def ck_list(config_path: Path | None) -> None:
        """List checkpoints, oldest first."""
        from . import checkpoint as ck

        settings, cfg = _settings(config_path)
        _echo({"directory": str(_ckpt_dir(settings, cfg)), "checkpoints": ck.list_checkpoints(_ckpt_dir(settings,
                                                                                                          cfg))})

    @checkpoint.command("restore")
    @click.argument("name")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @CONFIG_OPTION
    def ck_restore(name: str, yes: bool, config_path: Path | None) -> None:
        """Replace the database with checkpoint NAME (or 'latest'); the sidecar must be stopped. On restart the
        engine resumes from the checkpoint's head and the source re-delivers the later blocks."""
        from . import checkpoint as ck

        settings, cfg = _settings(config_path)
        path = _sqlite_file(settings)
        if not yes:
            click.confirm(f"Replace {path} with checkpoint {name}?", abort=True)
        try:
            _echo(ck.restore(path, _ckpt_dir(settings, cfg), name))
        except ck.CheckpointError as e:
            raise click.ClickException(str(e)) from e

    @checkpoint.command("prune")
    @click.option("--keep", type=int, default=None, help="How many to keep (default: checkpoint_keep).")
    @CONFIG_OPTION
    def ck_prune(keep: int | None, config_path: Path | None) -> None:
        """Delete all but the newest checkpoints."""
        from . import checkpoint as ck

        settings, cfg = _settings(config_path)
        _echo({"deleted": ck.prune(_ckpt_dir(settings, cfg), keep if keep is not None else cfg.checkpoint_keep)})

    cli.add_command(checkpoint, "checkpoint")

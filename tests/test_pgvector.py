"""tests/pgvector.py: the test server loads the portable pgvector build and its HNSW index answers 384-dimensional
cosine KNN (the wheel's AVX-512 build dies with SIGILL there); a tarball whose SHA-256 differs is refused."""

from __future__ import annotations

import http.server
import threading

import numpy as np
import psycopg
import pytest

from tests import pgvector
from tests.pg import PASSWORD, required


def test_the_test_server_runs_pgvectors_hnsw_on_this_cpu(pg_server, pg_url):
    if not pgvector.hnsw_runs():
        if required():
            pytest.fail(pgvector.describe())
        pytest.skip(pgvector.describe())
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 384)).astype(np.float32)
    q = rng.standard_normal((20, 384)).astype(np.float32)
    text = [("[" + ",".join(map(str, v.tolist())) + "]",) for v in x]
    with psycopg.connect(pg_url, password=PASSWORD, autocommit=True) as conn:
        (version,) = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        if pg_server.pgvector is not None:
            assert version == pgvector.VERSION, "CREATE EXTENSION took the wheel's pgvector, not the build"
            (path,) = conn.execute("SHOW dynamic_library_path").fetchone()
            assert path.startswith(str(pg_server.pgvector / "lib"))
        conn.execute("CREATE TABLE v (id bigint PRIMARY KEY, e vector(384))")
        with conn.cursor() as cur:  # half before the index (its build), half through it (HNSW inserts)
            cur.executemany("INSERT INTO v VALUES (%s, %s::vector)", [(i, t) for i, (t,) in enumerate(text[:300])])
            cur.execute("CREATE INDEX ON v USING hnsw (e vector_cosine_ops)")
            cur.executemany("INSERT INTO v VALUES (%s, %s::vector)",
                            [(i + 300, t) for i, (t,) in enumerate(text[300:])])
        conn.execute("SET hnsw.ef_search = 100")
        conn.execute("SET enable_seqscan = off")  # 600 rows: the planner would rather sort them all
        plan = [r[0] for r in conn.execute("EXPLAIN SELECT id FROM v ORDER BY e <=> %s::vector LIMIT 10",
                                           (text[0][0],))]
        assert "Index Scan using v_e_idx" in plan[1], plan[:2]
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        found = 0
        for qv in q:
            want = set(np.argsort(-(xn @ (qv / np.linalg.norm(qv))))[:10].tolist())
            rows = conn.execute("SELECT id, e <=> %s::vector FROM v ORDER BY e <=> %s::vector LIMIT 10",
                                ("[" + ",".join(map(str, qv.tolist())) + "]",) * 2).fetchall()
            distances = [d for _, d in rows]
            assert distances == sorted(distances)
            found += len(want & {int(i) for i, _ in rows})
        assert found / (10 * len(q)) >= 0.9, "HNSW recall@10 on 600 vectors at ef_search 100"


def test_a_tarball_whose_sha256_differs_is_refused(tmp_path, monkeypatch):
    body = b"not pgvector"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/pgvector_{pgvector.VERSION}.orig.tar.gz"
        monkeypatch.setattr(pgvector, "URL", url)
        with pytest.raises(pgvector.BuildError, match=rf"{url} has SHA-256 [0-9a-f]{{64}}, expected {pgvector.SHA256}"):
            pgvector.download(tmp_path)
    finally:
        server.shutdown()
        server.server_close()

"""Where a block of the ``balances`` plugin (bench/ingest.py) spends its time on PostgreSQL (issue 15).

On a real server started for the run (tests/pg.py, ``fsync`` on), with mainnet-shaped 200-transaction blocks:

1. **Statements per block**: the runs of distinct recipients ``PgConnection.executemany`` cuts an upsert of the
   block's transfers into (pg_batch.chunks), the most frequent recipient's count, the distinct recipients.
2. **Lockstep, block by block**: the plugin on a plain connection (no triggers) and the engine with the trigger
   journal, each with the upsert's runs sent as one call of pg_batch's function (today) and as pipelined statements
   (before), ms per block each; on the engine's database ``track_functions = 'pl'`` gives the undo trigger's own
   time per changed row (``pg_stat_user_functions.self_time``) and pg_batch's function's per block.
3. **Server time per statement shape**: ``EXPLAIN ANALYZE`` of the same blocks' statements (the per-transaction
   upsert as its runs, the summed upsert as one statement, and one-row upserts), on three tables: no trigger, the
   row trigger ``monmouth_record_undo`` (what the engine installs), and statement-level triggers with transition
   tables (``REFERENCING OLD TABLE / NEW TABLE``, one ``INSERT ... SELECT`` per statement, old and new images paired
   by position), the candidate docs/storage.md weighs. Executor time and trigger time, ms per block.

Run:  python bench/pg_ingest_profile.py [--blocks 60]
Prints its figures; the last line is JSON.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import Balances, make_engine, open_backend

from monmouth.backends import pg_batch
from monmouth.types import Chain, ChainCommitted
from tests.chains import load_mainnet_blocks, mainnet_shaped
from tests.pg import PgServer

PER_TRANSACTION, SUMMED = Balances("postgres"), Balances("postgres", summed=True)
TABLE = "CREATE TABLE bal_accounts (holder bytea PRIMARY KEY, received numeric(78) NOT NULL, txs bigint NOT NULL)"
ROW_TRIGGER = ("CREATE TRIGGER monmouth_undo AFTER INSERT OR UPDATE OR DELETE ON bal_accounts FOR EACH ROW "
               "EXECUTE FUNCTION monmouth_record_undo()")
_RECORD = """CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE b text := current_setting('monmouth.block', true);
BEGIN
    IF b IS NULL OR b = '' THEN RETURN NULL; END IF;
    {body}
    RETURN NULL;
END $$;"""
STATEMENT_TRIGGERS = (
    _RECORD.format(name="stmt_undo_insert", body="INSERT INTO monmouth_undo (block, tbl, op, new) "
                   "SELECT b::bigint, TG_TABLE_NAME, 'I', to_jsonb(n) FROM monmouth_new n;")
    + _RECORD.format(name="stmt_undo_update", body="INSERT INTO monmouth_undo (block, tbl, op, old, new) "
                     "SELECT b::bigint, TG_TABLE_NAME, 'U', x.o, x.n FROM ROWS FROM ("
                     "jsonb_array_elements((SELECT jsonb_agg(o) FROM monmouth_old o)), "
                     "jsonb_array_elements((SELECT jsonb_agg(n) FROM monmouth_new n))) AS x(o, n);")
    + "CREATE TRIGGER stmt_undo_insert AFTER INSERT ON bal_accounts REFERENCING NEW TABLE AS monmouth_new "
      "FOR EACH STATEMENT EXECUTE FUNCTION stmt_undo_insert();"
    + "CREATE TRIGGER stmt_undo_update AFTER UPDATE ON bal_accounts REFERENCING OLD TABLE AS monmouth_old "
      "NEW TABLE AS monmouth_new FOR EACH STATEMENT EXECUTE FUNCTION stmt_undo_update();")


def lockstep(server: PgServer, blocks: list[Any]) -> dict[str, float]:
    """Four sides block by block (the order rotates): the plugin on a plain connection (no triggers) and the engine
    (trigger journal), each with the upsert's runs as one call of pg_batch's function (what executemany does) and as
    pipelined statements (before it); then the undo trigger's and the function's own time on the engine's side."""
    sides: list[tuple[str, Any]] = []
    engines = []
    hook = Balances("postgres").monmouth_block_applied
    for one_call in (True, False):
        url = server.database()
        with server.admin() as admin:
            admin.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" SET track_functions = \'pl\'')
        engine = make_engine(url, Balances("postgres"), "FULL")
        plain = open_backend(server.database(), "FULL").connect()
        for script in Balances("postgres").monmouth_migrations():
            plain.execute(script)
        for conn in (engine.conn, plain):
            form = pg_batch.batch_statement(conn, Balances.PG_UPSERT)
            assert form is not None and form.function
            conn._batches[Balances.PG_UPSERT] = form if one_call else dataclasses.replace(form, function=b"", call=b"")
        how = "one call" if one_call else "pipelined"

        def plain_side(n: Any, b: Any, plain: Any = plain) -> None:
            plain.execute("BEGIN")
            hook(conn=plain, block=b, notification=n)
            plain.execute("COMMIT")

        sides += [(f"plain psycopg, {how}", plain_side),
                  (f"engine + trigger journal, {how}", lambda n, b, engine=engine: engine.apply(n))]
        engines.append((engine, plain))
    took = [0.0] * len(sides)
    for i, b in enumerate(blocks):
        n = ChainCommitted(Chain((b,)))
        for k in range(len(sides)):
            j = (i + k) % len(sides)
            t = time.perf_counter()
            sides[j][1](n, b)
            took[j] += time.perf_counter() - t
    out = {f"{name} ms_per_block": t / len(blocks) * 1e3 for (name, _), t in zip(sides, took, strict=True)}
    engine = engines[0][0]
    engine.conn.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(0.6)  # the statistics collector's flush
    own = {name: (calls, self_ms) for name, calls, self_ms in engine.conn.execute(
        "SELECT funcname, calls, self_time FROM pg_stat_user_functions").fetchall()}
    calls, trigger_ms = own.get("monmouth_record_undo", (0, 0.0))
    batch = [v for k, v in own.items() if k.startswith("monmouth_batch_")]
    for engine, plain in engines:
        engine.close()
        plain.close()
    out.update({"trigger_us_per_row": trigger_ms / max(calls, 1) * 1e3, "trigger_rows": calls,
                "batch_function_ms_per_call": (batch[0][1] / batch[0][0]) if batch else 0.0})
    print(f"[lockstep, {len(blocks)} blocks] " + ", ".join(f"{name} {t / len(blocks) * 1e3:.2f} ms/block"
                                                          for (name, _), t in zip(sides, took, strict=True)))
    print(f"[lockstep] one call / pipelined: plain {took[2] / took[0]:.3f}x as fast, engine {took[3] / took[1]:.3f}x; "
          f"undo trigger's own time {out['trigger_us_per_row']:.1f} us per row ({calls} rows); pg_batch's function "
          f"(the upserts' runs, server side, triggers excluded) {out['batch_function_ms_per_call']:.2f} ms per block",
          flush=True)
    return out


def explained(server: PgServer, blocks: list[Any]) -> dict[str, dict[str, float]]:
    """``EXPLAIN ANALYZE`` of each block's statements, per trigger kind and statement shape: ms per block."""
    out: dict[str, dict[str, float]] = {}
    for trigger in ("none", "row", "statement"):
        conn = open_backend(server.database(), "FULL").connect()
        conn.execute(TABLE)
        if trigger == "row":
            conn.execute(ROW_TRIGGER)
        elif trigger == "statement":
            conn.execute(STATEMENT_TRIGGERS)
        upsert = pg_batch.batch_statement(conn, Balances.PG_UPSERT)
        for shape in ("per-transaction runs", "summed", "one-row statements (first 50)"):
            executor = triggers = statements = 0.0
            for i, b in enumerate(blocks):
                if shape == "summed":
                    planned = pg_batch.plan(upsert, SUMMED.rows(b))
                elif shape == "per-transaction runs":
                    planned = pg_batch.plan(upsert, PER_TRANSACTION.rows(b))
                else:
                    planned = [(upsert.sql, [[h], [v], [n]])  # type: ignore[union-attr]
                               for h, v, n in PER_TRANSACTION.rows(b)[:50]]
                assert planned is not None
                conn.execute("BEGIN")
                conn.execute("SELECT set_config('monmouth.block', ?, true)", (str(i + 1),))
                for sql, params in planned:
                    statements += 1
                    for (line,) in conn.raw.execute(b"EXPLAIN (ANALYZE) " + sql, params).fetchall():
                        if line.startswith("Trigger "):
                            triggers += float(line.split("time=")[1].split()[0])
                        elif line.startswith("Execution Time"):
                            executor += float(line.split()[2])
                conn.execute("COMMIT")
            key = f"{trigger} trigger, {shape}"
            out[key] = {"statements_per_block": statements / len(blocks),
                        "execution_ms_per_block": executor / len(blocks), "trigger_ms_per_block": triggers / len(blocks)}
            print(f"[EXPLAIN ANALYZE] {key}: {statements / len(blocks):.1f} statements, execution "
                  f"{executor / len(blocks):.2f} ms/block, of which triggers {triggers / len(blocks):.2f}", flush=True)
        conn.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blocks", type=int, default=60)
    args = ap.parse_args()
    blocks = list(mainnet_shaped(load_mainnet_blocks(), args.blocks, txs_per_block=200))
    runs = [len(pg_batch.chunks(PER_TRANSACTION.rows(b), (0,))) for b in blocks]
    top = [max(collections.Counter(h for h, _, _ in PER_TRANSACTION.rows(b)).values()) for b in blocks]
    distinct = [len({h for h, _, _ in PER_TRANSACTION.rows(b)}) for b in blocks]
    print(f"{args.blocks} mainnet-shaped blocks of 200 transactions: upsert runs of distinct recipients per block "
          f"{statistics.mean(runs):.1f} (min {min(runs)}, max {max(runs)}); most frequent recipient "
          f"{statistics.mean(top):.1f} times; distinct recipients {statistics.mean(distinct):.1f}", flush=True)
    figures: dict[str, Any] = {"blocks": args.blocks, "runs_per_block": round(statistics.mean(runs), 1),
                               "top_recipient_per_block": round(statistics.mean(top), 1),
                               "distinct_recipients_per_block": round(statistics.mean(distinct), 1)}
    with PgServer(durable=True) as server:
        figures["lockstep"] = {k: round(v, 3) for k, v in lockstep(server, blocks).items()}
        figures["explain"] = {k: {m: round(x, 3) for m, x in v.items()} for k, v in explained(server, blocks).items()}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

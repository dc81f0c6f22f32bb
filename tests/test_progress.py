"""Per-plugin progress: a plugin enabled late is brought up to the head from history, exactly once and reorg-exact,
while the others follow the head; its range survives a restart (real SQLite files and PostgreSQL databases,
synthetic chains)."""

from __future__ import annotations

import pytest

from monmouth import hookimpl
from monmouth.config import validate
from monmouth.errors import ConfigError
from monmouth.plugins import config_models
from monmouth.progress import Progress, StaleHistoryError
from monmouth.types import Block, ChainCommitted, ChainReorged
from tests.chains import chain, extend
from tests.plugins import ledger

LEDGER = ("ledger_transfers", "ledger_balances", "ledger_block_stats")


class Tally:
    """A live plugin: one row per block (portable SQL: it runs on both backends)."""

    monmouth_backends = hookimpl(lambda self: ("sqlite", "postgres"))

    @hookimpl
    def monmouth_migrations(self):
        return ["CREATE TABLE tally_blocks (number BIGINT PRIMARY KEY, hash BYTEA NOT NULL)"]

    @hookimpl
    def monmouth_block_applied(self, conn, block, notification):
        conn.execute("INSERT INTO tally_blocks VALUES (?, ?)", (block.number, block.hash))


def dump(conn, tables=(*LEDGER, "tally_blocks")) -> dict[str, list[tuple]]:
    return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}


def settings(plugins, enabled, **source):
    data = {"plugins": {n: {"enabled": n in enabled} for n in plugins}, "source": {"start_block": 1, **source}}
    return validate(data, "<test>", config_models(plugins))


def enable(engine, progress, plugins, enabled):
    s = settings(plugins, enabled)
    engine.host.apply_settings(s)
    return progress.sync(s)


def test_a_late_plugin_catches_up_exactly_once_through_reorgs_and_a_restart(both_engine_factory):
    plugins = {"ledger": ledger, "tally": Tally()}
    e = both_engine_factory("live.sqlite", plugins=plugins, enabled=("tally",))
    p = Progress(e)
    p.sync(settings(plugins, ("tally",)))
    canonical: list[Block] = extend(None, 10, number=1, n_txs=2)
    e.apply(ChainCommitted(chain(canonical)))

    assert enable(e, p, plugins, ("tally", "ledger")) == ["ledger catching up from block 1 to #10 0x" +
                                                           canonical[-1].hash.hex()]
    r = p.ranges()["ledger"]
    assert (r.state, r.first, r.last) == ("catching_up", 1, 0)

    def history(first: int, last: int) -> list[Block]:
        return [b for b in canonical if first <= b.number <= last]

    assert p.step("ledger", history(1, 4)) == (4, False)
    # Live blocks go to tally only while ledger catches up.
    new = extend(canonical[-1], 2, salt="a")
    e.apply(ChainCommitted(chain(new)))
    canonical += new
    assert e.conn.execute("SELECT max(block_number) FROM ledger_transfers").fetchone()[0] == 4

    # kill -9 / restart: the range is durable.
    e.host.shutdown()
    e.close()
    e = both_engine_factory("live.sqlite", plugins=plugins, enabled=("tally", "ledger"))
    p = Progress(e)
    p.sync(settings(plugins, ("tally", "ledger")))
    assert p.ranges()["ledger"].last == 4 and not e.host.pm.has_plugin("ledger")

    # A reorg above the plugin's range does not touch it.
    old, new = canonical[-3:], extend(canonical[-4], 3, salt="b")
    e.apply(ChainReorged(chain(old), chain(new)))
    canonical = canonical[:-3] + new
    assert p.step("ledger", history(5, 8)) == (4, False)
    # A reorg below it reverts its writes and moves its range back to the fork point.
    old, new = canonical[6:], extend(canonical[5], 7, salt="c")
    e.apply(ChainReorged(chain(old), chain(new)))
    stale = old[:2]
    canonical = canonical[:6] + new
    r = p.ranges()["ledger"]
    assert (r.last, r.last_hash) == (6, canonical[5].hash)
    assert e.conn.execute("SELECT max(block_number) FROM ledger_transfers").fetchone()[0] == 6
    before = dump(e.conn)
    with pytest.raises(StaleHistoryError, match="is not canonical"):
        p.step("ledger", stale)
    with pytest.raises(StaleHistoryError, match="does not follow its range"):
        p.step("ledger", history(8, 9))
    assert dump(e.conn) == before and p.ranges()["ledger"].last == 6

    assert p.step("ledger", history(7, 99)) == (7, True)  # up to the head: live again
    assert p.ranges()["ledger"].state == "live" and e.host.pm.has_plugin("ledger")
    new = extend(canonical[-1], 3, salt="d")
    e.apply(ChainCommitted(chain(new)))
    canonical += new
    old, new = canonical[-5:], extend(canonical[-6], 4, salt="e")  # reverts caught-up and live blocks alike
    e.apply(ChainReorged(chain(old), chain(new)))
    canonical = canonical[:-5] + new

    ref = both_engine_factory("ref.sqlite", plugins={"ledger": ledger, "tally": Tally()})
    ref.apply(ChainCommitted(chain(canonical)))
    assert dump(e.conn) == dump(ref.conn)


def test_disabled_then_re_enabled_catches_up_the_blocks_it_missed(both_engine_factory):
    plugins = {"ledger": ledger, "tally": Tally()}
    e = both_engine_factory("live.sqlite", plugins=plugins)
    p = Progress(e)
    p.sync(settings(plugins, ("tally", "ledger")))
    canonical = extend(None, 5, number=1)
    e.apply(ChainCommitted(chain(canonical)))
    assert enable(e, p, plugins, ("tally",)) == [f"ledger off at #5 0x{canonical[-1].hash.hex()}"]
    new = extend(canonical[-1], 7, salt="off")
    e.apply(ChainCommitted(chain(new)))
    canonical += new
    old, new = canonical[3:], extend(canonical[2], 10, salt="reorg")  # reverts blocks it had while off, too
    e.apply(ChainReorged(chain(old), chain(new)))
    canonical = canonical[:3] + new
    assert p.ranges()["ledger"].last == 3
    assert enable(e, p, plugins, ("tally", "ledger")) == ["ledger catching up from block 4"]
    assert p.step("ledger", canonical[3:]) == (len(canonical) - 3, True)
    ref = both_engine_factory("ref.sqlite", plugins={"ledger": ledger, "tally": Tally()})
    ref.apply(ChainCommitted(chain(canonical)))
    assert dump(e.conn) == dump(ref.conn)


def test_plugin_start_block_must_be_a_block_number():
    plugins = {"ledger": ledger}
    with pytest.raises(ConfigError, match="plugins.ledger.start_block: must be a block number >= 0"):
        validate({"plugins": {"ledger": {"enabled": True, "start_block": -3}}}, "<test>", config_models(plugins))
    s = validate({"plugins": {"ledger": {"enabled": True, "start_block": 7}}}, "<test>", config_models(plugins))
    assert s.plugins["ledger"].start_block == 7

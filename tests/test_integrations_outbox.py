"""The shared outbox and deliverer, exercised through the EigenDA plugin and its fake proxy: jobs written in the
engine's transaction, reverts cancelling undelivered work, retries with backoff, the circuit breaker opening and
closing, lost answers redelivered under the same key without duplicated effects, and no stale result when a
block is reverted while its request is in flight. The revert and in-flight tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import time

from monmouth.types import ChainCommitted, ChainReorged, ChainReverted
from monmouth_integrations.eigenda.plugin import EigenDAPlugin
from tests.chains import chain, extend
from tests.fakes.eigenda_proxy import FakeEigenDAProxy
from tests.fakes.harness import FAST, close, integration_engine, sample


def setup(target, fake, **cfg):
    """``target``: a directory (a SQLite file in it) or a ``storage_of`` function (each backend in turn)."""
    plugin = EigenDAPlugin(workers=False)
    engine = integration_engine(target("db.sqlite") if callable(target) else target / "db.sqlite", {"eigenda": plugin},
                                {"eigenda": {"url": fake.url, "every_blocks": 2, **FAST, **cfg}})
    return engine, plugin, plugin.rt.deliverer


def outbox(engine):
    return engine.conn.execute("SELECT key, state, attempts FROM eigenda_outbox ORDER BY id").fetchall()


def certs(engine):
    return {n: "0x" + h.hex() for n, h in engine.conn.execute("SELECT block_number, block_hash FROM eigenda_certs")}


def drain(deliverer, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        deliverer.run_once()
        counts = deliverer.outbox.counts()
        if counts["pending"] == counts["sending"] == 0:
            return
        assert time.monotonic() < deadline, counts
        time.sleep(0.02)


def test_reverts_cancel_undelivered_work_and_delivered_keys_are_not_sent_twice(storage_of):
    with FakeEigenDAProxy() as fake:
        engine, plugin, d = setup(storage_of, fake)
        bs = extend(None, 6, number=1)
        engine.apply(ChainCommitted(chain(bs)))
        assert [k.split(":")[2] for k, _, _ in outbox(engine)] == ["2", "4", "6"]
        # Reorg 5..6 before anything was delivered: the job of the old block 6 disappears, the new one appears.
        new = extend(bs[3], 3, salt="fork")
        engine.apply(ChainReorged(chain(bs[4:]), chain(new)))
        keys = [k for k, _, _ in outbox(engine)]
        assert [k.split(":")[2] for k in keys] == ["2", "4", "6"]
        assert keys[2].endswith("0x" + new[1].hash.hex())
        drain(d)
        assert fake.received_keys == keys  # the reverted job was never sent
        assert certs(engine) == {2: "0x" + bs[1].hash.hex(), 4: "0x" + bs[3].hash.hex(), 6: "0x" + new[1].hash.hex()}
        # Revert the delivered block 6' (its cert goes with it), then bring the very same block back: the job
        # comes back under the same key and is completed from the delivery log, not sent again.
        engine.apply(ChainReverted(chain(new[1:])))
        assert 6 not in certs(engine)
        engine.apply(ChainCommitted(chain(new[1:])))
        drain(d)
        assert fake.received_keys == keys
        assert certs(engine)[6] == "0x" + new[1].hash.hex()
        assert sample(engine, "monmouth_eigenda_deliveries_total", {"outcome": "deduplicated"}) == 1
        assert sample(engine, "monmouth_eigenda_deliveries_total", {"outcome": "delivered"}) == 3
        close(engine)


def test_retries_with_backoff_on_5xx_timeouts_and_malformed_answers(tmp_path):
    with FakeEigenDAProxy(hang_s=2.0) as fake:
        engine, plugin, d = setup(tmp_path, fake, timeout_s=0.3, backoff_initial_s=0.2, backoff_max_s=0.4)
        engine.apply(ChainCommitted(chain(extend(None, 2, number=1))))
        fake.script("5xx", "timeout", "malformed")
        # Three failing attempts, each rescheduled with a backoff of 0.2 to 0.4 s; nothing is due in between.
        for i in range(1, 4):
            t0 = time.time()
            assert d.run_once() == 1
            key, state, attempts = outbox(engine)[0]
            assert (state, attempts) == ("pending", i)
            next_at = engine.conn.execute("SELECT next_at FROM eigenda_outbox").fetchone()[0]
            assert 0.2 <= next_at - t0 <= 0.4 + (time.time() - t0)
            assert d.run_once() == 0  # not due yet
            time.sleep(max(0.0, next_at - time.time()) + 0.01)
        assert d.run_once() == 1
        assert outbox(engine)[0][1:] == ("done", 4)
        assert [r.outcome for r in fake.requests] == ["5xx", "timeout", "malformed", "ok"]
        assert sample(engine, "monmouth_eigenda_attempts_total", {"outcome": "transient"}) == 3
        assert sample(engine, "monmouth_eigenda_attempts_total", {"outcome": "ok"}) == 1
        assert 2 in certs(engine)
        close(engine)


def test_breaker_opens_rejects_without_calling_then_closes(tmp_path):
    with FakeEigenDAProxy() as fake:
        engine, plugin, d = setup(tmp_path, fake, every_blocks=1, breaker_fail_max=3, breaker_reset_s=0.5)
        engine.apply(ChainCommitted(chain(extend(None, 8, number=1))))
        fake.fail("503")
        d.run_once()
        assert fake.count() == 3  # the third failure opened the breaker; the rest of the batch waited
        assert plugin.rt.breaker.current_state == "open"
        assert sample(engine, "monmouth_eigenda_breaker_state") == 2
        time.sleep(0.1)
        for _ in range(3):
            d.run_once()
        assert fake.count() == 3  # open: nothing reaches the service
        assert plugin.monmouth_status()["breaker"] == "open"
        fake.heal()
        time.sleep(0.55)
        drain(d)
        assert plugin.rt.breaker.current_state == "closed"
        assert sample(engine, "monmouth_eigenda_breaker_transitions_total", {"to": "half-open"}) == 1
        assert sample(engine, "monmouth_eigenda_breaker_transitions_total", {"to": "closed"}) == 1
        assert sample(engine, "monmouth_eigenda_breaker_state") == 0
        assert len(certs(engine)) == 8 and len(set(fake.received_keys)) == 8
        close(engine)


def test_breaker_reopens_when_the_half_open_trial_fails(tmp_path):
    with FakeEigenDAProxy() as fake:
        engine, plugin, d = setup(tmp_path, fake, every_blocks=1, breaker_fail_max=2, breaker_reset_s=0.3)
        engine.apply(ChainCommitted(chain(extend(None, 3, number=1))))
        fake.fail("5xx")
        d.run_once()
        assert plugin.rt.breaker.current_state == "open" and fake.count() == 2
        time.sleep(0.35)
        d.run_once()  # one trial, fails: open again
        assert fake.count() == 3 and plugin.rt.breaker.current_state == "open"
        assert sample(engine, "monmouth_eigenda_breaker_transitions_total", {"to": "open"}) == 2
        close(engine)


def test_a_lost_answer_is_resent_under_the_same_key_and_done_once(tmp_path):
    with FakeEigenDAProxy(hang_s=1.0) as fake:
        engine, plugin, d = setup(tmp_path, fake, timeout_s=0.3)
        engine.apply(ChainCommitted(chain(extend(None, 2, number=1))))
        fake.fail("lost", times=1)  # the proxy disperses, but the answer never arrives
        d.run_once()
        assert outbox(engine)[0][1:] == ("pending", 1)
        drain(d)
        key = outbox(engine)[0][0]
        assert fake.received_keys == [key, key]  # sent twice over the wire, under one key...
        assert fake.dispersals == 1  # ...dispersed once
        assert len(fake.blobs) == 1
        close(engine)


def test_a_permanent_error_parks_the_job_and_max_attempts_gives_up(tmp_path):
    with FakeEigenDAProxy() as fake:
        engine, plugin, d = setup(tmp_path, fake, every_blocks=1, max_attempts=2)
        engine.apply(ChainCommitted(chain(extend(None, 1, number=1))))
        fake.fail("5xx")
        drain(d)
        assert outbox(engine)[0][1:] == ("failed", 2)
        assert "gave up after 2 attempts" in plugin.monmouth_status()["last_error"]
        # A 4xx (here: the proxy refusing the query) is permanent at once.
        fake.heal()
        plugin.rt.deliverer.handler.proxy.url = fake.url + "/nope"
        engine.apply(ChainCommitted(chain(extend(engine_block(engine), 1))))
        drain(d)
        assert outbox(engine)[1][1:] == ("failed", 1)
        assert sample(engine, "monmouth_eigenda_attempts_total", {"outcome": "permanent"}) == 1
        assert plugin.rt.outbox.requeue_failed() == 2
        plugin.rt.deliverer.handler.proxy.url = fake.url
        drain(d)
        assert [s for _, s, _ in outbox(engine)] == ["done", "done"]
        close(engine)


def engine_block(engine):
    return engine.canonical(engine.head.number).as_block()


def test_no_stale_result_when_the_block_is_reverted_in_flight(storage_of):
    with FakeEigenDAProxy() as fake:
        engine, plugin, d = setup(storage_of, fake)
        bs = extend(None, 2, number=1)
        engine.apply(ChainCommitted(chain(bs)))
        handler = d.handler
        real = handler.deliver

        def deliver_then_revert(job, body):
            out = real(job, body)
            engine.apply(ChainReverted(chain(bs[1:])))  # the engine reverts block 2 while the answer travels
            return out

        handler.deliver = deliver_then_revert
        d.run_once()
        assert outbox(engine) == [] and certs(engine) == {}  # no cert for a block that is gone
        assert plugin.rt.outbox.logged(fake.received_keys[0]) is not None  # but the delivery is remembered
        close(engine)

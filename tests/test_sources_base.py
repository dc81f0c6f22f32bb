"""The source interface's Delivery: a notification given outright or decoded on first access, and released."""

from __future__ import annotations

import pytest

from monmouth.errors import CodecError, SourceError
from monmouth.sources.base import Delivery, Source
from monmouth.types import ChainCommitted
from tests.chains import chain, extend


def test_delivery_decodes_once_on_first_access_and_can_be_released() -> None:
    n = ChainCommitted(chain(extend(None, 2, number=1, n_txs=1)))
    calls: list[int] = []

    def load() -> ChainCommitted:
        calls.append(1)
        return n

    d = Delivery(None, {"seq": 1}, 10, load=load)
    assert not d.loaded and "not yet decoded" in repr(d)
    assert d.notification is n and d.notification is n and calls == [1] and d.loaded
    d.release()
    with pytest.raises(RuntimeError, match="released"):
        _ = d.notification
    assert Delivery(n).notification is n
    with pytest.raises(TypeError):
        Delivery(n, load=load)
    with pytest.raises(TypeError):
        Delivery()


def test_a_failed_load_raises_on_every_access() -> None:
    def load() -> ChainCommitted:
        raise CodecError("new[0].hash: Expected `bytes` of length 32")

    d = Delivery(None, load=load)
    for _ in range(2):
        with pytest.raises(CodecError, match="new\\[0\\].hash"):
            _ = d.notification


@pytest.mark.anyio
async def test_sources_that_never_defer_give_up_on_refusal() -> None:
    class Plain(Source):
        kind = "plain"

        def stream(self, view):  # type: ignore[no-untyped-def, override]
            raise NotImplementedError

    src = Plain()
    assert src.take_ready(10) == []
    with pytest.raises(SourceError, match="plain source delivered a malformed notification"):
        await src.refuse(Delivery(ChainCommitted(chain(extend(None, 1, number=1)))), CodecError("bad"))

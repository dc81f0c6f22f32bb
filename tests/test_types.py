"""The data model's own checks."""

from __future__ import annotations

import pytest

from monmouth.errors import ChainError
from monmouth.types import Chain, ChainReorged
from tests.chains import chain, extend


def test_chain_must_be_contiguous_and_non_empty():
    bs = extend(None, 3, number=1)
    with pytest.raises(ChainError, match="at least one block"):
        Chain(())
    with pytest.raises(ChainError, match="not contiguous"):
        Chain((bs[0], bs[2]))
    other = extend(bs[0], 1, salt="x")[0]
    with pytest.raises(ChainError, match="not contiguous"):
        Chain((bs[0], bs[1], other))
    c = chain(bs)
    assert c.fork_point == bs[0].parent and c.tip is bs[2] and len(c) == 3


def test_reorg_chains_share_a_fork_point():
    bs = extend(None, 4, number=1)
    with pytest.raises(ChainError, match="do not share a fork point"):
        ChainReorged(chain(bs[2:]), chain(extend(bs[0], 2, salt="f")))


def test_selector_and_immutability():
    tx = extend(None, 1, number=1, n_txs=1)[0].transactions[0]
    assert tx.selector == bytes.fromhex("a9059cbb")
    with pytest.raises(AttributeError):
        tx.value = 1  # type: ignore[misc]

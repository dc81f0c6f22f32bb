"""Chain retrieval quality: the 10 real mainnet blocks indexed through the engine, labelled queries whose relevant
transactions are derived from the decoded logs (not from the text the search sees), precision@5 >= 0.8 on average."""

from __future__ import annotations

import msgspec
import pytest

import monmouth_rag.plugin as rag
from monmouth.types import Block, ChainCommitted
from monmouth_rag.decoded import DecodedTx
from tests.chains import chain, h, load_mainnet_blocks
from tests.test_rag_support import Rig

USDT = bytes.fromhex("dac17f958d2ee523a2206206994597c13d831ec7")
USDC = bytes.fromhex("a0b86991c6218b36c1d19d4a2e9eb0ce3606eb48")
WETH = bytes.fromhex("c02aaa39b223fe8d0a0e5c4f27ead9083c756cc2")
UNISWAP_SWAPS = {"Swap(address,uint256,uint256,uint256,uint256,address)",
                 "Swap(address,address,int256,int256,uint160,uint128,int24)"}


def _logs(d: DecodedTx, name: str, address: bytes | None = None) -> bool:
    return any(e.name == name and (address is None or e.address == address) for e in d.events)


#: query → relevance label computed from the decoded logs.
QUERIES = {
    "USDT transfers": lambda d: _logs(d, "Transfer", USDT),
    "USDC transfers": lambda d: _logs(d, "Transfer", USDC),
    "Uniswap swaps": lambda d: any(e.signature in UNISWAP_SWAPS for e in d.events),
    "WETH deposits": lambda d: _logs(d, "Deposit", WETH),
    "unwrap WETH withdrawals": lambda d: _logs(d, "Withdrawal", WETH),
    "NFT transfers": lambda d: any(t.standard == "erc721" for t in d.transfers),
    "token approvals": lambda d: _logs(d, "Approval") or _logs(d, "ApprovalForAll"),
}


def rechain(blocks: list[Block]) -> list[Block]:
    """The real blocks made contiguous (numbers and parent hashes; transactions and receipts untouched)."""
    out = [blocks[0]]
    for b in blocks[1:]:
        prev = out[-1]
        out.append(msgspec.structs.replace(b, number=prev.number + 1, parent_hash=prev.hash,
                                           hash=h("rechain", b.hash)))
    return out


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    rig = Rig(tmp_path_factory.mktemp("retrieval") / "db.sqlite", worker=False)
    blocks = rechain(load_mainnet_blocks())
    rig.engine.apply(ChainCommitted(chain(blocks)))
    rag.drain()
    labels = {}
    for b in blocks:
        for i, tx in enumerate(b.transactions):
            d = rag.decode_transaction(b, i)
            labels["0x" + tx.hash.hex()] = {q: f(d) for q, f in QUERIES.items()}
    yield labels
    rig.close()


def precision_at_5(labels, mode: str) -> dict[str, float]:
    out = {}
    for q in QUERIES:
        hits = rag.search(q, 5, mode, {"kind": "tx"})
        assert len(hits) == 5
        out[q] = sum(labels[x.provenance["tx_hash"]][q] for x in hits) / 5
    return out


def test_precision_at_5_on_labelled_chain_queries(indexed):
    report = {mode: precision_at_5(indexed, mode) for mode in ("hybrid", "vector", "keyword")}
    for mode, per in report.items():
        print(mode, round(sum(per.values()) / len(per), 3), per)
    hybrid = report["hybrid"]
    assert sum(hybrid.values()) / len(hybrid) >= 0.8, hybrid
    assert sum(report["vector"].values()) / len(QUERIES) >= 0.8, report["vector"]

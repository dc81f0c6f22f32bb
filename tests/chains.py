"""Chain builders for tests and benchmarks (not shipped; plugin authors build chains from monmouth.types):
synthetic chains with forks, and mainnet-shaped chains re-chained from the real blocks in ``../shared/data/mainnet/``.

Hashes here are made up (keccak of a label), so these chains are contiguous and forkable but not
consensus-valid; use the mainnet files themselves where real hashes matter.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
from eth_hash.auto import keccak

from monmouth.jsonrpc import block_from_rpc
from monmouth.types import Block, Chain, Log, Receipt, Transaction

#: ERC-20 ``Transfer(address,address,uint256)`` topic.
TRANSFER_TOPIC = keccak(b"Transfer(address,address,uint256)")


def h(*parts: object) -> bytes:
    """A deterministic 32-byte hash of ``parts``."""
    return keccak(repr(parts).encode())


def address(i: int) -> bytes:
    """A deterministic 20-byte address for account ``i``."""
    return h("addr", i)[:20]


def make_block(parent: Block | None, *, salt: object = 0, n_txs: int = 2, rng: random.Random | None = None,
               accounts: int = 8, number: int | None = None, parent_hash: bytes | None = None) -> Block:
    """A synthetic block on ``parent`` (or at ``number``/``parent_hash`` for a first block) with ``n_txs``
    value transfers between ``accounts`` accounts, each with an ERC-20-style ``Transfer`` log."""
    rng = rng or random.Random(repr((salt, number, parent.hash if parent else None)))
    num = parent.number + 1 if parent else (number or 0)
    ph = parent.hash if parent else (parent_hash or b"\x00" * 32)
    bh = h("block", num, ph, salt)
    txs, rcs = [], []
    gas = 0
    for i in range(n_txs):
        a, b = rng.randrange(accounts), rng.randrange(accounts)
        value = rng.randrange(1, 10**18)
        tx = Transaction(
            hash=h("tx", bh, i), type=2, sender=address(a), to=address(b), value=value,
            input=bytes.fromhex("a9059cbb") + b"\x00" * 12 + address(b) + value.to_bytes(32, "big"),
            nonce=rng.randrange(1000), gas_limit=60_000, gas_price=None, max_fee_per_gas=30 * 10**9,
            max_priority_fee_per_gas=10**9, chain_id=1,
        )
        gas += 51_000
        topics = (TRANSFER_TOPIC, b"\x00" * 12 + address(a), b"\x00" * 12 + address(b))
        log = Log(address(100 + rng.randrange(3)), topics, value.to_bytes(32, "big"))
        txs.append(tx)
        rcs.append(Receipt(1, gas, (log,)))
    return Block(num, bh, ph, 1_700_000_000 + 12 * num, address(999), 30_000_000, gas, 7 * 10**9,
                 tuple(txs), tuple(rcs))


def extend(parent: Block | None, count: int, *, salt: object = 0, n_txs: int = 2, number: int = 0) -> list[Block]:
    """``count`` synthetic blocks, each on the previous, starting on ``parent`` (or at ``number``)."""
    out: list[Block] = []
    for _ in range(count):
        b = make_block(out[-1] if out else parent, salt=salt, n_txs=n_txs, number=number)
        out.append(b)
    return out


def chain(blocks: Sequence[Block]) -> Chain:
    return Chain(tuple(blocks))


# ---------------------------------------------------------------------------------------------------- mainnet


def shared_data_dir() -> Path:
    """``../shared/data`` relative to the repository root (where the tests and benchmarks read real data)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def load_mainnet_blocks(directory: Path | None = None) -> list[Block]:
    """The 10 real mainnet blocks with receipts, converted to :class:`Block`, in block order.

    Raises:
        FileNotFoundError: the shared data directory is missing.
    """
    directory = directory or shared_data_dir() / "mainnet"
    blocks = []
    for f in sorted(directory.glob("*.json")):
        raw = json.loads(f.read_text())
        blocks.append(block_from_rpc(raw["block"], raw["receipts"]))
    if not blocks:
        raise FileNotFoundError(f"no mainnet blocks in {directory}")
    return blocks


def mainnet_shaped(templates: Sequence[Block], count: int, *, txs_per_block: int = 200, start: int = 20_000_000,
                   salt: object = "bench") -> Iterator[Block]:
    """``count`` contiguous blocks whose transactions and receipts are taken, in rotation, from the real
    ``templates`` (``txs_per_block`` each; transaction hashes are re-derived so they stay unique)."""
    pool_tx: list[Transaction] = [t for b in templates for t in b.transactions]
    pool_rc: list[Receipt] = [r for b in templates for r in b.receipts]
    parent_hash = h("genesis", salt)
    k = 0
    for i in range(count):
        num = start + i
        bh = h("block", num, parent_hash, salt)
        txs, rcs = [], []
        cum = 0
        for j in range(txs_per_block):
            t, r = pool_tx[k % len(pool_tx)], pool_rc[k % len(pool_rc)]
            k += 1
            txs.append(msgspec.structs.replace(t, hash=h("tx", bh, j)))
            prev = pool_rc[(k - 2) % len(pool_rc)].cumulative_gas_used if j else 0
            cum += max(r.cumulative_gas_used - prev, 21_000)
            rcs.append(msgspec.structs.replace(r, cumulative_gas_used=cum))
        tpl = templates[i % len(templates)]
        yield Block(num, bh, parent_hash, tpl.timestamp + 12 * i, tpl.beneficiary, 30_000_000, cum,
                    tpl.base_fee_per_gas or 10**9, tuple(txs), tuple(rcs))
        parent_hash = bh

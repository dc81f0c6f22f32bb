"""Memory agents registered from an on-chain registry's events (``[[plugins.memory.registries]]``).

Fast tests drive the real engine with hand-built blocks (indexed and data parameters, unregistration, forget,
reorgs compared with a fresh index of the final chain); the anvil test compiles a registry contract with the npm
``solc``, deploys it on anvil and runs the whole sidecar (rpc source, runner) through registrations, the agents'
own transactions, an unregistration and ``anvil_reorg``s that drop them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest
from eth_abi import encode as abi_encode
from eth_hash.auto import keccak

from monmouth.chain import selector
from monmouth.config import ConfigError, validate
from monmouth.types import Block, ChainCommitted, ChainReorged, ChainReverted, Log, Receipt, Transaction
from monmouth_memory import registry
from monmouth_memory.config import MemoryConfig
from monmouth_memory.errors import UnknownAgentError
from monmouth_memory.plugin import MemoryPlugin
from tests.chains import address, h
from tests.memory_helpers import close, dump_tables, make_memory_engine

REG1, REG2 = address(501), address(502)
A, B, C, OTHER = address(11), address(12), address(13), address(14)
EV1 = "AgentRegistered(address indexed agent, string name)"
UNREG1 = "AgentUnregistered(address indexed agent)"
# The agent's address in the data, after an indexed id and a string: decoded with eth-abi.
EV2 = "event Enrolled(uint indexed id, string name, address who);"

REGISTRIES = [
    {"address": "0x" + REG1.hex(), "event": EV1, "unregister_event": UNREG1, "label": "name"},
    {"address": "0x" + REG2.hex(), "event": EV2, "agent": "who", "label": "name"},
]

#: Every memory table a block can change (journaled chain tables and memory_agents), compared after reorgs.
TABLES = {
    "memory_agents": "SELECT address, label, source, created_at, forgotten_at FROM memory_agents",
    "memory_registry": "SELECT * FROM memory_registry",
    "memory_items": "SELECT n, id, agent, kind, origin, version, nonce, ct, commitment, created_at, head_number, "
                    "head_hash FROM memory_items",
    "memory_tags": "SELECT * FROM memory_tags",
    "memory_leaves": "SELECT * FROM memory_leaves",
    "memory_marks": "SELECT agent, block_number, count FROM memory_marks",
    "memory_blocks": "SELECT block_number, block_hash, agents, ops_seq FROM memory_blocks",
}
FTS = {"sqlite": "SELECT rowid, tokens FROM memory_fts", "postgres": "SELECT n, tokens::text FROM memory_fts"}


def dump(conn) -> dict[str, list[tuple]]:
    return dump_tables(conn, {**TABLES, "memory_fts": FTS[getattr(conn, "backend", "sqlite")]})


def topic(a: bytes) -> bytes:
    return bytes(12) + a


def reg1(agent: bytes, name: str) -> Log:
    return Log(REG1, (keccak(b"AgentRegistered(address,string)"), topic(agent)), abi_encode(["string"], [name]))


def unreg1(agent: bytes) -> Log:
    return Log(REG1, (keccak(b"AgentUnregistered(address)"), topic(agent)), b"")


def reg2(agent: bytes, name: str, id_: int = 7) -> Log:
    return Log(REG2, (keccak(b"Enrolled(uint256,string,address)"), id_.to_bytes(32, "big")),
               abi_encode(["string", "address"], [name, "0x" + agent.hex()]))


def block(parent: Block | None, txs: list[tuple[bytes, bytes | None, tuple[Log, ...]]], salt: object = 0) -> Block:
    """A block on ``parent`` (or block 1) with one transaction ``(sender, to, logs)`` per entry."""
    num = parent.number + 1 if parent else 1
    ph = parent.hash if parent else bytes(32)
    bh = h("regblock", num, ph, salt)
    ts, rs = [], []
    for i, (sender, to, logs) in enumerate(txs):
        ts.append(Transaction(hash=h("regtx", bh, i), type=2, sender=sender, to=to, value=10**15, input=b"",
                              nonce=i, gas_limit=100_000, max_fee_per_gas=10**10, max_priority_fee_per_gas=10**9,
                              chain_id=1))
        rs.append(Receipt(1, 21_000 * (i + 1), logs))
    return Block(num, bh, ph, 1_700_000_000 + 12 * num, address(999), 30_000_000, 21_000 * len(txs), 10**9,
                 tuple(ts), tuple(rs))


def chain_of(*blocks: Block):
    from tests.chains import chain

    return chain(list(blocks))


@pytest.fixture
def mk(tmp_path, storage_of):
    """Memory engines with the registries, on each backend in turn."""
    engines = []

    def factory(name: str = "db.sqlite", **memory):
        cfg = {"key_dir": str(tmp_path / "keys"), "registries": REGISTRIES, **memory}
        e, p = make_memory_engine(storage_of(name), cfg)
        engines.append(e)
        return e, p.memory

    yield factory
    for e in engines:
        close(e)


# --------------------------------------------------------------------------------------------------- signatures


def test_parse_event_canonical_types_and_topic0():
    ev = registry.parse_event(EV2)
    assert ev.canonical == "Enrolled(uint256,string,address)"
    assert ev.topic0 == keccak(b"Enrolled(uint256,string,address)")
    assert [(p.name, p.type, p.indexed) for p in ev.params] == [
        ("id", "uint256", True), ("name", "string", False), ("who", "address", False)]
    assert ev.n_topics == 2 and ev.data_types == ("string", "address")
    t = registry.parse_event("Batch((address,uint8)[] indexed items, bytes32 root, int x)")
    assert t.canonical == "Batch((address,uint8)[],bytes32,int256)" and t.params[0].indexed
    assert registry.parse_event("Ping()").topic0 == keccak(b"Ping()")
    # The well-known ERC-20 topic (an outside constant).
    assert registry.parse_event("Transfer(address indexed from, address indexed to, uint256 value)").topic0.hex() \
        == "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


@pytest.mark.parametrize("sig, error", [
    ("AgentRegistered(address indexed agent", "not an event signature"),
    ("AgentRegistered(addr agent)", "unknown type 'addr'"),
    ("AgentRegistered(uint7 agent)", "unknown type 'uint7'"),
    ("AgentRegistered(address indexed agent extra)", "cannot parse parameter"),
    ("AgentRegistered(address a, address a)", "duplicate parameter name"),
    ("E(address indexed a, address indexed b, address indexed c, address indexed d)", "at most 3 indexed"),
])
def test_parse_event_errors(sig, error):
    with pytest.raises(ValueError, match=error):
        registry.parse_event(sig)


def config_error(entry: dict) -> str:
    with pytest.raises(ConfigError) as ei:
        validate({"plugins": {"memory": {"enabled": True, "registries": [entry]}}}, "config.toml",
                 {"memory": MemoryConfig})
    return str(ei.value)


@pytest.mark.parametrize("change, field, text", [
    ({"address": "0x1234"}, "plugins.memory.registries.0.address", "not a 0x-prefixed 20-byte hex address"),
    ({"address": "0x" + "zz" * 20}, "plugins.memory.registries.0.address", "not a 0x-prefixed 20-byte hex"),
    ({"event": "AgentRegistered address agent"}, "plugins.memory.registries.0.event", "not an event signature"),
    ({"event": "AgentRegistered(adress indexed agent)"}, "plugins.memory.registries.0.event", "unknown type"),
    ({"agent": "who"}, "plugins.memory.registries.0.agent", "parameter 'who' not found"),
    ({"agent": "name"}, "plugins.memory.registries.0.agent", "is string, not address"),
    ({"unregister_event": "AgentUnregistered(address indexed who)"}, "plugins.memory.registries.0.agent",
     "not found in AgentUnregistered(address) (parameters: who) (unregister_event)"),
    ({"unregister_event": "AgentUnregistered(bytes32 agent)"}, "plugins.memory.registries.0.agent",
     "is bytes32, not address (unregister_event)"),
    ({"label": "agent"}, "plugins.memory.registries.0.label", "is address, not string"),
    ({"event": "AgentRegistered(address indexed agent, string indexed name)"},
     "plugins.memory.registries.0.label", "is indexed"),
    ({"colour": "red"}, "plugins.memory.registries.0.colour", "unknown key"),
])
def test_config_errors_name_the_field(change, field, text):
    msg = config_error({**REGISTRIES[0], **change})
    assert field in msg and text in msg, msg


def test_config_refuses_the_same_event_twice_and_defaults_off():
    msg = config_error({"address": "0x" + REG1.hex(), "event": EV1, "unregister_event": EV1})
    assert "configured twice" in msg
    cfg = MemoryConfig()
    assert cfg.registries == [] and cfg.registry_index == {}
    assert MemoryConfig(registries=REGISTRIES) == MemoryConfig(registries=REGISTRIES)  # hot reload compares


# --------------------------------------------------------------------------------------------- hand-built blocks


def test_registers_from_indexed_and_data_parameters_and_agents_own_tx_is_an_episode(mk, tmp_path):
    e, mem = mk()
    assert mem.agents() == []
    # Block 1: A registers itself through REG1 (indexed agent), REG2 enrolls B (agent in the data); a log from
    # another contract with the same topic0 and one of REG2's topic0 under REG1's address are not registrations.
    b1 = block(None, [(A, REG1, (reg1(A, "alpha"),)),
                      (OTHER, REG2, (reg2(B, "beta"), Log(OTHER, reg1(C, "x").topics, reg1(C, "x").data),
                                     Log(REG1, reg2(C, "y").topics, reg2(C, "y").data)))])
    e.apply(ChainCommitted(chain_of(b1)))
    agents = {a["address"]: a for a in mem.agents()}
    assert set(agents) == {"0x" + A.hex(), "0x" + B.hex()}
    assert agents["0x" + A.hex()]["label"] == "alpha" and agents["0x" + B.hex()]["label"] == "beta"
    assert {a["source"] for a in agents.values()} == {"registry"}
    assert agents["0x" + A.hex()]["created_at"] == b1.timestamp
    assert (tmp_path / "keys" / f"{A.hex()}.key").exists() and (tmp_path / "keys" / f"{B.hex()}.key").exists()
    rows = e.conn.execute("SELECT agent, registry, block_number, tx_hash, log_index, label FROM memory_registry "
                          "ORDER BY log_index").fetchall()
    assert rows == [(A, REG1, 1, b1.transactions[0].hash, 0, "alpha"), (B, REG2, 1, b1.transactions[1].hash, 1, "beta")]
    # A's own registering transaction is already an episodic memory (registration runs before episodes).
    items = mem.list(A)
    assert len(items) == 1 and items[0]["kind"] == "episodic" and items[0]["metadata"]["block"] == 1
    assert mem.list(B) == []
    # Later transactions of both become episodes; the status counts registrations.
    b2 = block(b1, [(B, OTHER, ()), (OTHER, A, ())])
    e.apply(ChainCommitted(chain_of(b2)))
    assert len(mem.list(B)) == 1 and len(mem.list(A)) == 2
    st = e.host.status()["memory"]
    assert st["agents"] == 2
    assert st["registry"] == {"registries": 2, "agents": 2, "registered": 2, "unregistered": 0,
                              "ignored_forgotten": 0, "malformed": 0}


def test_reorg_of_the_registering_block_reverts_exactly(mk):
    e, mem = mk()
    b1 = block(None, [(OTHER, OTHER, ())])
    e.apply(ChainCommitted(chain_of(b1)))
    b2 = block(b1, [(A, REG1, (reg1(A, "alpha"),)), (OTHER, REG2, (reg2(B, "beta"),))])
    b3 = block(b2, [(A, B, ())])
    e.apply(ChainCommitted(chain_of(b2, b3)))
    assert len(mem.agents()) == 2 and len(mem.list(A)) == 2 and len(mem.list(B)) == 1
    # The same label set through the API and a forget-free reorg: no journal conflict.
    mem.register(B, label="renamed")
    fork = [block(b1, [(A, OTHER, ())], salt="fork")]
    fork.append(block(fork[0], [(OTHER, B, ())], salt="fork"))
    e.apply(ChainReorged(chain_of(b2, b3), chain_of(*fork)))
    assert mem.agents() == []
    for agent in (A, B):
        with pytest.raises(UnknownAgentError):
            mem.list(agent)
    assert e.conn.execute("SELECT count(*) FROM memory_registry").fetchone()[0] == 0
    assert e.conn.execute("SELECT count(*) FROM memory_items").fetchone()[0] == 0
    # Exactly what indexing only the final chain produces.
    ref, _ = mk("ref.sqlite")
    ref.apply(ChainCommitted(chain_of(b1, *fork)))
    assert dump(e.conn) == dump(ref.conn)


def test_unregister_and_its_revert(mk):
    e, mem = mk()
    b1 = block(None, [(A, REG1, (reg1(A, "alpha"),)), (OTHER, REG2, (reg2(B, "beta"),))])
    e.apply(ChainCommitted(chain_of(b1)))
    before = dump(e.conn)
    # REG2 never registered A and has no unregister event; REG1's unregister of B (registered by REG2) is ignored.
    b2 = block(b1, [(OTHER, REG1, (unreg1(A), unreg1(B)))])
    e.apply(ChainCommitted(chain_of(b2)))
    assert [a["address"] for a in mem.agents()] == ["0x" + B.hex()]
    with pytest.raises(UnknownAgentError):
        mem.list(A)
    b3 = block(b2, [(A, OTHER, ())])
    e.apply(ChainCommitted(chain_of(b3)))
    assert e.conn.execute("SELECT count(*) FROM memory_items WHERE agent = ?", (A,)).fetchone()[0] == 1  # block 1
    # Reverting the unregistration puts back the very same row (label, created_at) and registration.
    e.apply(ChainReverted(chain_of(b2, b3)))
    assert dump(e.conn) == before
    assert {a["address"] for a in mem.agents()} == {"0x" + A.hex(), "0x" + B.hex()}
    assert len(mem.list(A)) == 1  # its memory was kept, under the same key
    st = e.host.status()["memory"]["registry"]
    assert st["unregistered"] == 1 and st["agents"] == 2


def test_agents_registered_otherwise_keep_their_rows(mk):
    e, mem = mk(agents=["0x" + A.hex()])
    mem.register(B, label="api")
    b1 = block(None, [(OTHER, REG1, (reg1(A, "alpha"), reg1(B, "beta")))])
    e.apply(ChainCommitted(chain_of(b1)))
    info = {a["address"]: (a["source"], a["label"]) for a in mem.agents()}
    assert info == {"0x" + A.hex(): ("config", None), "0x" + B.hex(): ("api", "api")}
    assert e.conn.execute("SELECT count(*) FROM memory_registry").fetchone()[0] == 2
    b2 = block(b1, [(OTHER, REG1, (unreg1(A), unreg1(B)))])
    e.apply(ChainCommitted(chain_of(b2)))
    assert len(mem.agents()) == 2 and e.conn.execute("SELECT count(*) FROM memory_registry").fetchone()[0] == 0
    e.apply(ChainReverted(chain_of(b1, b2)))
    assert {a["source"] for a in mem.agents()} == {"config", "api"}


def test_forget_is_final(mk, tmp_path):
    e, mem = mk()
    b1 = block(None, [(A, REG1, (reg1(A, "alpha"),))])
    b2 = block(b1, [(A, OTHER, ())])
    e.apply(ChainCommitted(chain_of(b1, b2)))
    assert len(mem.list(A)) == 2
    mem.forget(A)
    key = tmp_path / "keys" / f"{A.hex()}.key"
    assert not key.exists()
    # A later registration event does not bring it back, nor create a key.
    b3 = block(b2, [(A, REG1, (reg1(A, "again"),)), (OTHER, REG2, (reg2(A, "again"),))])
    e.apply(ChainCommitted(chain_of(b3)))
    assert mem.agents() == [] and not key.exists()
    assert e.host.status()["memory"]["registry"]["ignored_forgotten"] == 2
    # Reverting every block (registration included) conflicts with nothing and keeps the tombstone.
    e.apply(ChainReverted(chain_of(b1, b2, b3)))
    row = e.conn.execute("SELECT source, forgotten_at FROM memory_agents WHERE address = ?", (A,)).fetchone()
    assert row[0] == "registry" and row[1] is not None
    e.apply(ChainCommitted(chain_of(b1, b2)))
    assert mem.agents() == [] and not key.exists()
    assert e.conn.execute("SELECT count(*) FROM memory_items").fetchone()[0] == 0


def test_undecodable_logs_are_counted_not_fatal(mk):
    e, mem = mk()
    good = reg1(A, "alpha")
    bad = [
        Log(REG1, (*good.topics, bytes(32)), good.data),            # one topic too many
        Log(REG1, good.topics, b"\x01" * 7),                        # data is not an ABI string
        Log(REG1, (good.topics[0], b"\x01" * 32), good.data),       # a topic that is not an address
        Log(REG2, reg2(B, "b").topics, b""),                         # no data
    ]
    b1 = block(None, [(OTHER, REG1, tuple(bad))])
    e.apply(ChainCommitted(chain_of(b1)))
    assert mem.agents() == []
    assert e.host.status()["memory"]["registry"]["malformed"] == 4


def test_env_key_source_registers_and_counts_the_missing_key(mk, monkeypatch):
    monkeypatch.delenv(f"MONMOUTH_MEMORY_KEY_{A.hex().upper()}", raising=False)
    e, mem = mk(key_source="env")
    b1 = block(None, [(A, REG1, (reg1(A, "alpha"),))])
    e.apply(ChainCommitted(chain_of(b1)))
    assert e.conn.execute("SELECT source FROM memory_agents WHERE address = ?", (A,)).fetchone() == ("registry",)
    assert mem.key_errors == 1  # the registration; its episode is skipped when the block is settled
    mem.ensure_settled()
    assert mem.key_errors == 2


def test_no_registry_configured_no_status_and_no_work(tmp_path):
    e, p = make_memory_engine(tmp_path / "db.sqlite", {"key_dir": str(tmp_path / "keys")})
    try:
        e.apply(ChainCommitted(chain_of(block(None, [(A, REG1, (reg1(A, "alpha"),))]))))
        assert p.memory.agents() == [] and "registry" not in e.host.status()["memory"]
        assert e.conn.execute("SELECT count(*) FROM memory_registry").fetchone()[0] == 0
    finally:
        close(e)


# ------------------------------------------------------------------------------------------------------- anvil

JS = Path(__file__).resolve().parent / "js" / "node_modules"

REGISTRY_SOL = """
// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

contract AgentRegistry {
    event AgentRegistered(address indexed agent, string name);
    event AgentUnregistered(address indexed agent);

    function register(address agent, string calldata name) external { emit AgentRegistered(agent, name); }
    function registerSelf(string calldata name) external { emit AgentRegistered(msg.sender, name); }
    function unregister(address agent) external { emit AgentUnregistered(agent); }
}
"""

def compile_registry() -> dict:
    if shutil.which("node") is None or not (JS / "solc").is_dir():
        pytest.fail("needs node and the npm solc: run `npm install` in tests/js")
    from monmouth_demo import compile_solidity

    return compile_solidity(REGISTRY_SOL, "AgentRegistry", JS, timeout=300)


def call_data(sig: str, types: list[str], args: list) -> str:
    return "0x" + (selector(sig) + abi_encode(types, args)).hex()


def send(anvil, sender: int, to: str, data: str = "0x", value: int = 0) -> str:
    return anvil.rpc("eth_sendTransaction", {"from": anvil.accounts[sender], "to": to, "data": data,
                                             "value": hex(value), "gas": hex(200_000)})


def synced(app, anvil) -> bool:
    n, hh = anvil.head()
    head = app.engine.head
    return head is not None and head.number == n and "0x" + head.hash.hex() == hh


@pytest.mark.anvil
@pytest.mark.anyio
async def test_registry_contract_on_anvil_registers_follows_and_reorgs(tmp_path, anvil):
    from monmouth.runner import Runner
    from monmouth.sources.rpc import RpcSource
    from tests.conftest import wait_for
    from tests.fakes.harness import open_test_app

    art = compile_registry()
    tx = anvil.rpc("eth_sendTransaction", {"from": anvil.accounts[9], "data": art["bytecode"], "gas": hex(1_000_000)})
    anvil.mine()  # block 1
    contract = anvil.rpc("eth_getTransactionReceipt", tx)["contractAddress"]
    acct = [bytes.fromhex(a[2:]) for a in anvil.accounts]
    cfg = {"key_dir": str(tmp_path / "keys"), "embed": False, "registries": [
        {"address": contract, "event": "AgentRegistered(address indexed agent, string name)",
         "unregister_event": "AgentUnregistered(address indexed agent)", "label": "name"}]}

    def memory_app(name: str):
        plugin = MemoryPlugin(workers=False)
        return open_test_app(tmp_path / name, {"memory": plugin}, {"memory": cfg}), plugin

    app, plugin = memory_app("live.sqlite")
    runner = Runner(app, RpcSource(anvil.url, poll_interval=0.05, batch_size=8), serve_http=False,
                    watch_config=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        mem = plugin.memory
        # Block 2: account 1 registers itself (its own transaction), account 9 registers account 2.
        send(anvil, 1, contract, call_data("registerSelf(string)", ["string"], ["one"]))
        send(anvil, 9, contract, call_data("register(address,string)", ["address", "string"],
                                           [anvil.accounts[2], "two"]))
        anvil.mine()
        # Block 3: both agents send ether.
        anvil.send(1, 5, 10**15)
        anvil.send(2, 6, 2 * 10**15)
        anvil.mine()
        await wait_for(lambda: synced(app, anvil), what="blocks 1-3")
        agents = {a["address"]: a for a in mem.agents()}
        assert set(agents) == {"0x" + acct[1].hex(), "0x" + acct[2].hex()}
        assert agents["0x" + acct[1].hex()]["label"] == "one" and agents["0x" + acct[2].hex()]["source"] == "registry"
        one = sorted(i["metadata"]["block"] for i in mem.list(acct[1]))
        two = sorted(i["metadata"]["block"] for i in mem.list(acct[2]))
        assert one == [2, 3] and two == [3]  # the self-registration transaction itself is an episode
        before_unregister = dump(app.engine.conn)
        # Block 4: account 2 is unregistered; a reorg dropping block 4 registers it again, identically.
        send(anvil, 9, contract, call_data("unregister(address)", ["address"], [anvil.accounts[2]]))
        anvil.mine()
        await wait_for(lambda: synced(app, anvil), what="block 4")
        assert [a["address"] for a in mem.agents()] == ["0x" + acct[1].hex()]
        anvil.rpc("anvil_reorg", 1, [])
        await wait_for(lambda: synced(app, anvil), what="reorg of block 4")
        assert dump(app.engine.conn) == {**before_unregister, "memory_blocks": dump(app.engine.conn)["memory_blocks"]}
        assert {a["address"] for a in mem.agents()} == set(agents)
        # A reorg dropping blocks 2-4 (the registrations): nobody is registered, no rows are left.
        anvil.rpc("anvil_reorg", 3, [[{"from": anvil.accounts[3], "to": anvil.accounts[4], "value": hex(10**14)}, 0]])
        await wait_for(lambda: synced(app, anvil), what="reorg of blocks 2-4")
        assert mem.agents() == []
        conn = app.engine.conn
        for t in ("memory_agents", "memory_registry", "memory_items", "memory_leaves", "memory_marks", "memory_tags"):
            assert conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 0, t
        assert mem.global_root()["agents"] == 0
        tg.cancel_scope.cancel()
    live = dump(app.engine.conn)
    app.close()
    # The final state equals a fresh sidecar indexing anvil's final chain (same key directory).
    fresh, _ = memory_app("fresh.sqlite")
    runner = Runner(fresh, RpcSource(anvil.url, poll_interval=0.05, batch_size=32), serve_http=False,
                    watch_config=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await wait_for(lambda: synced(fresh, anvil), what="fresh index")
        tg.cancel_scope.cancel()
    assert dump(fresh.engine.conn) == live
    fresh.close()

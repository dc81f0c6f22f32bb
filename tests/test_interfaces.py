"""What one plugin offers another (``monmouth.interfaces``): the built-in plugins implement the protocols, a plugin
finds them on the enabled plugins, and the memory plugin's chain hook runs first whatever the registration order,
so an agent registered on chain in a block is in the directory when another plugin reads it for that block."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import monmouth_memory.plugin as memory_module
import monmouth_rag.plugin as rag_module
from monmouth import hookimpl
from monmouth.config import validate
from monmouth.engine import Engine
from monmouth.errors import NotFoundError, TooLargeError
from monmouth.interfaces import (
    AgentDirectory,
    AgentMemory,
    AgentMemorySource,
    EmbedderSource,
    TransactionRenderer,
    provider,
)
from monmouth.metrics import Metrics
from monmouth.plugins import PluginHost, config_models
from monmouth.store import Database
from monmouth.types import ChainCommitted
from monmouth_memory.plugin import MemoryPlugin
from monmouth_rag.plugin import RagPlugin
from tests.chains import address
from tests.test_memory_registry import REGISTRIES, block, chain_of, reg1

A = address(11)


def test_built_in_plugins_implement_what_they_offer():
    rag, memory = RagPlugin(), MemoryPlugin()
    assert isinstance(rag, EmbedderSource) and isinstance(rag, TransactionRenderer)
    assert not isinstance(rag, AgentDirectory)
    assert isinstance(memory, AgentDirectory) and isinstance(memory, AgentMemorySource)
    assert not isinstance(rag, AgentMemorySource)
    assert not isinstance(memory, EmbedderSource) and not isinstance(memory, TransactionRenderer)
    # The entry points' instances, and the modules (their names are those instances' bound methods).
    assert isinstance(rag_module.plugin, RagPlugin) and isinstance(memory_module.plugin, MemoryPlugin)
    assert isinstance(rag_module, TransactionRenderer) and isinstance(memory_module, AgentDirectory)
    assert isinstance(memory_module, AgentMemorySource)
    assert rag_module.search.__self__ is rag_module.plugin  # type: ignore[attr-defined]


class Spy:
    """A plugin reading the agent directory in its own chain hook."""

    def __init__(self) -> None:
        self.host: Any = None
        self.seen: list[tuple[int, set[bytes]]] = []

    @hookimpl
    def monmouth_startup(self, ctx: Any) -> None:
        self.host = ctx.host

    @hookimpl
    def monmouth_block_applied(self, conn: Any, block: Any, notification: Any) -> None:
        directory = provider(self.host, AgentDirectory)
        assert directory is not None
        self.seen.append((block.number, set(directory.agent_addresses(conn))))


def test_provider_finds_the_first_enabled_plugin_that_offers_it(tmp_path):
    assert provider(None, AgentDirectory) is None
    spy, memory = Spy(), MemoryPlugin(workers=False)
    plugins: dict[str, object] = {"spy": spy, "memory": memory}
    host = PluginHost(plugins, Database(tmp_path / "db.sqlite"), CollectorRegistry())
    host.apply_settings(validate({"plugins": {"spy": {"enabled": True}, "memory": {"enabled": False}}}, "<test>",
                                 config_models(plugins)))
    try:
        assert provider(host, AgentDirectory) is None  # memory is installed but not enabled
        host.apply_settings(validate({"plugins": {"spy": {"enabled": True}, "memory": {
            "enabled": True, "key_dir": str(tmp_path / "keys")}}}, "<test>", config_models(plugins)))
        assert provider(host, AgentDirectory) is memory
        assert provider(host, TransactionRenderer) is None
    finally:
        host.shutdown()


@pytest.mark.parametrize("order", [("memory", "spy"), ("spy", "memory")])
def test_memory_chain_hook_runs_first_whatever_the_order(tmp_path, order):
    spy, memory = Spy(), MemoryPlugin(workers=False)
    objects: dict[str, object] = {"spy": spy, "memory": memory}
    plugins = {name: objects[name] for name in order}
    db = Database(tmp_path / "db.sqlite")
    metrics = Metrics(CollectorRegistry())
    host = PluginHost(plugins, db, metrics.registry)
    settings = validate({"plugins": {"spy": {"enabled": True}, "memory": {
        "enabled": True, "key_dir": str(tmp_path / "keys"), "registries": REGISTRIES}}}, "<test>",
        config_models(plugins))
    host.apply_settings(settings)
    engine = Engine(db, host, settings.engine, metrics)
    try:
        b1 = block(None, [(address(99), address(501), (reg1(A, "alpha"),))])
        engine.apply(ChainCommitted(chain_of(b1)))
        assert spy.seen == [(1, {A})]  # registered by a log of block 1, seen by the other plugin's hook for block 1
    finally:
        host.shutdown()
        engine.close()


def test_agent_memory_offers_what_the_integrations_use(tmp_path):
    """The memory another plugin gets (``AgentMemory``): agents, remembering an episode, exporting an agent with its
    proofs, checkpoints, the global root at a block, and refusals as ``monmouth.errors.RequestError`` kinds; ``None`` while not started."""
    from tests.chains import chain, extend
    from tests.memory_helpers import close, make_memory_engine

    assert MemoryPlugin().get_agent_memory() is None
    e, p = make_memory_engine(tmp_path / "db.sqlite", {"key_dir": str(tmp_path / "keys"), "agents": ["0x" + A.hex()],
                                                       "max_content_bytes": 200})
    try:
        bs = extend(None, 2, number=1, n_txs=0)
        e.apply(ChainCommitted(chain(bs[:1])))
        source = provider(e.host, AgentMemorySource)
        assert source is p
        offered = source.get_agent_memory()
        assert isinstance(offered, AgentMemory)
        assert [a["address"] for a in offered.agents()] == ["0x" + A.hex()]
        assert offered.max_content_bytes == 200
        offered.check_agent(A)
        with pytest.raises(NotFoundError, match="is not a registered agent"):
            offered.check_agent(address(99))
        item = offered.remember(A, "called a tool", tags=["composio"], metadata={"tool": "X"})
        assert item["kind"] == "episodic" and item["agent"] == "0x" + A.hex()
        stored = p.memory.get(A, bytes.fromhex(item["id"][2:]))
        assert stored["content"] == "called a tool" and stored["tags"] == ["composio"]
        assert stored["metadata"] == {"tool": "X"}
        with pytest.raises(TooLargeError, match="content"):
            offered.remember(A, "x" * 201)
        e.apply(ChainCommitted(chain(bs[1:])))
        archive = offered.export_agent(A)
        assert [x["id"] for x in archive["items"]] == [item["id"]]
        assert offered.checkpoints() == []
        # The global root at a block, as the memory's own API gives it, with the block's agent count; none for a
        # block not applied or another hash.
        root, agents = offered.global_root_at(2, bs[1].hash)
        assert "0x" + root.hex() == p.memory.global_root(2)["root"] and agents == 1
        assert offered.global_root_at(2) == (root, agents)
        assert offered.global_root_at(2, bytes(32)) is None and offered.global_root_at(3) is None
    finally:
        close(e)

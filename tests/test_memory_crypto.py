"""plugins/memory/crypto.py: the keyed hashes (copies of one keyed HMAC per agent) equal the standard library's one-shot
HMAC-SHA256 (RFC 2104) of the same messages, so salts, nonces, search tokens and lookup hashes stored before stay
valid."""

from __future__ import annotations

import hashlib
import hmac
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from monmouth_memory.crypto import AgentKey


def reference_mac(raw: bytes, label: bytes, *parts: bytes) -> bytes:
    sub = hmac.new(raw, b"monmouth.memory.mac.v1", hashlib.sha256).digest()
    return hmac.digest(sub, label + b"".join(len(p).to_bytes(4, "big") + p for p in parts), "sha256")


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=32, max_size=32), item_id=st.binary(min_size=32, max_size=32),
       version=st.integers(0, 2**32 - 1), words=st.lists(st.text(min_size=1, max_size=80) | st.text(st.characters(max_codepoint=127), min_size=1),
                                max_size=8),
       label=st.binary(max_size=40), parts=st.lists(st.binary(max_size=200), max_size=4))
def test_keyed_hashes_equal_one_shot_hmac(raw: bytes, item_id: bytes, version: int, words: list[str], label: bytes,
                                          parts: list[bytes]) -> None:
    k = AgentKey(raw)
    v = version.to_bytes(4, "big")
    assert k.mac(label, *parts) == reference_mac(raw, label, *parts)
    assert k.salt(item_id, version) == reference_mac(raw, b"salt", item_id, v)
    assert k.det_nonce(item_id, version) == reference_mac(raw, b"nonce", item_id, v)[:12]
    for w in words:
        for _ in range(2):  # computed, then from the cache
            assert k.tag_hash(w) == reference_mac(raw, b"tag", w.encode())[:16]
            assert k.key_hash(w) == reference_mac(raw, b"key", w.encode())[:16]
    text = " ".join(words * 2)  # every word twice
    expected = [reference_mac(raw, b"tok", w.encode())[:6].hex() for w in re.findall(r"\w+", text.lower())]
    assert k.tokens(text) == " ".join(expected) == k.tokens(text)
    assert k.token_list(text) == list(dict.fromkeys(expected))

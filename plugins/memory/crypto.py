"""Per-agent keys, AES-GCM encryption at rest, and keyed hashes (salts, search tokens, tag and key lookups).

Every agent has its own 256-bit key. Nothing derived from an item's plaintext is stored except under that key:

* content, key, tags and metadata are one AES-256-GCM ciphertext (``cryptography``'s ``AESGCM``; NIST SP 800-38D)
  with the associated data ``agent || item id || version``, so a ciphertext cannot be moved to another row;
* the salt of the content commitment, the full-text search tokens, and the tag and key lookup hashes are
  HMAC-SHA256 outputs under the key (RFC 2104), so they reveal nothing once the key is destroyed;
* embedding vectors are encrypted like content.

Forgetting an agent destroys its key (crypto-shredding): what remains in old checkpoints is ciphertext no key opens.

Key sources:

* ``file`` (default): ``<key_dir>/<address hex>.key``, 32 random bytes, mode 0600, created when the agent is
  registered; destroyed (overwritten, fsynced, unlinked) on forget;
* ``env``: the hex key in ``<key_env_prefix><ADDRESS HEX>`` (uppercase, no ``0x``). Forget cannot destroy
  an environment variable: it deletes the data and reports that the operator must remove the variable.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from monmouth.errors import MonmouthError

NONCE_BYTES = 12
KEY_BYTES = 32
_WORD = re.compile(r"\w+", re.UNICODE)
_ASCII_WORD = re.compile(r"\w+", re.ASCII)  # the same words in ASCII text, found ~1.5x faster

_CACHE_MAX = 4096  # words (and tags) whose keyed hash each key keeps


def _words(text: str) -> list[str]:
    """The lower-cased words (``\\w+``, Unicode) of ``text``."""
    low = text.lower()
    return (_ASCII_WORD if low.isascii() else _WORD).findall(low)


def aad(agent: bytes, item_id: bytes, version: int) -> bytes:
    """AES-GCM associated data binding a ciphertext to its row: ``agent || item id || uint32 version``."""
    return agent + item_id + version.to_bytes(4, "big")


class MissingKeyError(MonmouthError):
    """An agent's key is missing or unreadable."""


class KeyStore:
    """Loads, creates and destroys per-agent keys.

    Args:
        source: ``"file"`` or ``"env"``.
        key_dir: directory of key files (``file``).
        env_prefix: environment variable prefix (``env``).
        environ: the environment (defaults to ``os.environ``).
    """

    def __init__(self, source: str, key_dir: Path, env_prefix: str = "MONMOUTH_MEMORY_KEY_",
                 environ: Mapping[str, str] | None = None) -> None:
        self.source = source
        self.key_dir = key_dir
        self.env_prefix = env_prefix
        self.environ = os.environ if environ is None else environ
        self._cache: dict[bytes, AgentKey] = {}
        self._lock = threading.Lock()

    def _path(self, agent: bytes) -> Path:
        return self.key_dir / f"{agent.hex()}.key"

    def env_name(self, agent: bytes) -> str:
        """The environment variable holding ``agent``'s key (``env`` source)."""
        return f"{self.env_prefix}{agent.hex().upper()}"

    def create(self, agent: bytes) -> AgentKey:
        """Create (``file``) or check (``env``) the key of a newly registered agent; keeps an existing key file.

        Raises:
            MissingKeyError: ``env`` source and the variable is unset or malformed.
        """
        if self.source == "file":
            path = self._path(agent)
            if not path.exists():
                self.key_dir.mkdir(parents=True, exist_ok=True)
                os.chmod(self.key_dir, 0o700)
                tmp = path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, os.urandom(KEY_BYTES))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
        return self.get(agent)

    def get(self, agent: bytes) -> AgentKey:
        """The agent's key (cached).

        Raises:
            MissingKeyError: missing or malformed.
        """
        k = self._cache.get(agent)
        if k is not None:
            return k
        with self._lock:
            if self.source == "file":
                try:
                    raw = self._path(agent).read_bytes()
                except FileNotFoundError:
                    raise MissingKeyError(f"no key file for agent 0x{agent.hex()} in {self.key_dir}") from None
            else:
                name = self.env_name(agent)
                value = self.environ.get(name)
                if value is None:
                    raise MissingKeyError(f"no key for agent 0x{agent.hex()}: environment variable {name} is not set")
                try:
                    raw = bytes.fromhex(value.removeprefix("0x"))
                except ValueError:
                    raise MissingKeyError(f"{name} is not hex") from None
            if len(raw) != KEY_BYTES:
                raise MissingKeyError(f"the key of agent 0x{agent.hex()} must be {KEY_BYTES} bytes (got {len(raw)})")
            k = AgentKey(raw)
            self._cache[agent] = k
            return k

    def has(self, agent: bytes) -> bool:
        try:
            self.get(agent)
        except MissingKeyError:
            return False
        return True

    def destroy(self, agent: bytes) -> bool:
        """Destroy the agent's key. Returns True when the key material was destroyed (``file`` source: the file
        is overwritten with zeros, fsynced and unlinked); False for ``env`` (the operator must unset it)."""
        self._cache.pop(agent, None)
        if self.source != "file":
            return False
        path = self._path(agent)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return True
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"\x00" * size)
            os.fsync(fd)
        finally:
            os.close(fd)
        path.unlink()
        dfd = os.open(self.key_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return True


class AgentKey:
    """One agent's key: AES-256-GCM encryption and HMAC-SHA256 derivations.

    Every HMAC (RFC 2104) is under the MAC sub-key, set up once here as a keyed :class:`hmac.HMAC`; each MAC is a
    ``copy()`` of it (the key's inner and outer SHA-256 states already computed) that hashes only its message. The
    one-shot ``hmac.digest`` set the key up again each time, more than half of a short message's cost, and settling
    hashes ~10 short messages per chain episode (salt, nonce, search tokens)."""

    __slots__ = ("_aead", "_keyed", "_mac", "_tags", "_tok", "_tok_keyed")

    def __init__(self, raw: bytes) -> None:
        self._aead = AESGCM(raw)
        # Sub-keys, so that no output of one use can be replayed as another (HKDF-like expand with HMAC).
        self._mac = hmac.new(raw, b"monmouth.memory.mac.v1", hashlib.sha256).digest()
        self._keyed = hmac.new(self._mac, digestmod="sha256")
        self._tok_keyed = self._keyed.copy()
        self._tok_keyed.update(b"tok")  # the fixed prefix of every search token's message
        self._tok: dict[str, str] = {}  # word -> token (in memory only; dropped with the key)
        self._tags: dict[str, bytes] = {}  # tag -> tag_hash (idem)

    def _hmac(self, keyed: hmac.HMAC, msg: bytes) -> bytes:
        """HMAC-SHA256 of ``msg`` under the MAC sub-key, from ``keyed`` (having absorbed any fixed prefix of the
        message)."""
        h = keyed.copy()
        h.update(msg)
        return h.digest()

    def mac(self, label: bytes, *parts: bytes) -> bytes:
        """HMAC-SHA256 of ``label`` and length-prefixed ``parts`` under the agent's MAC sub-key (32 bytes)."""
        return self._hmac(self._keyed, label + b"".join(len(p).to_bytes(4, "big") + p for p in parts))

    def salt(self, item_id: bytes, version: int) -> bytes:
        """The commitment salt of an item version (32 bytes; never stored, re-derived from the key)."""
        return self.mac(b"salt", item_id, version.to_bytes(4, "big"))

    def det_nonce(self, item_id: bytes, version: int) -> bytes:
        """A deterministic nonce for chain-derived items (same id and version always encrypt the same plaintext,
        so replays and restores produce identical rows)."""
        return self.mac(b"nonce", item_id, version.to_bytes(4, "big"))[:NONCE_BYTES]

    def encrypt(self, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> tuple[bytes, bytes]:
        """``(nonce, ciphertext||tag)``; a random 96-bit nonce unless one is given."""
        nonce = nonce or os.urandom(NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Decrypt and authenticate.

        Raises:
            cryptography.exceptions.InvalidTag: wrong key, or the row was tampered with or moved.
        """
        return self._aead.decrypt(nonce, ciphertext, aad)

    def tag_hash(self, tag: str) -> bytes:
        """The 16-byte lookup hash of a tag (cached, like search tokens)."""
        t = self._tags.get(tag)
        if t is None:
            t = self.mac(b"tag", tag.encode())[:16]
            if len(self._tags) >= _CACHE_MAX:
                self._tags.clear()
            self._tags[tag] = t
        return t

    def key_hash(self, key: str) -> bytes:
        """The 16-byte lookup hash of an item key."""
        return self.mac(b"key", key.encode())[:16]

    def tokens(self, text: str) -> str:
        """The text as keyed search tokens: each lower-cased word becomes 12 hex characters of its HMAC, so the
        FTS5 index holds no plaintext. Queries are tokenised the same way."""
        return " ".join(self._tokens(_words(text)))

    def _tokens(self, words: list[str]) -> list[str]:
        cache = self._tok
        out = [cache.get(w) for w in words]  # most words of a text were seen before
        if None not in out:
            return out  # type: ignore[return-value]
        keyed = self._tok_keyed
        for i, t in enumerate(out):
            if t is None and (t := cache.get(w := words[i])) is None:  # (a word seen twice: computed once)
                b = w.encode()
                t = self._hmac(keyed, len(b).to_bytes(4, "big") + b)[:6].hex()  # = mac(b"tok", b)[:6]
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[w] = t
            out[i] = t
        return out  # type: ignore[return-value]

    def token_list(self, text: str) -> list[str]:
        """Distinct keyed tokens of ``text``, in order of first appearance."""
        return list(dict.fromkeys(self._tokens(_words(text))))

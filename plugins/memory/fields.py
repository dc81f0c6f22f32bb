"""Parsing and validation of the memory API's request fields (addresses, item ids, text, item fields).

Every error is a :class:`~.errors.MemoryRequestError` naming the field, of a kind (its class) that
:mod:`monmouth.problems` maps to the HTTP status the API answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monmouth import chain
from monmouth.chain import AddressError
from monmouth.limits import check_json_value, check_text

from .config import MemoryConfig
from .errors import InvalidRequestError, MemoryRequestError, TooLargeError
from .merkle import canonical_json
from .schema import KINDS

MAX_TAGS = 32
MAX_TAG_LEN = 64
MAX_KEY_LEN = 256


def parse_address(value: str, field: str = "agent") -> bytes:
    """20-byte hex address (``0x`` optional, surrounding blanks ignored) to bytes.

    Raises:
        MemoryRequestError: malformed (400, naming ``field``).
    """
    try:
        return chain.parse_address(value.strip(), field, bare_ok=True)
    except AddressError:
        raise MemoryRequestError(field, f"{value!r} is not a 20-byte hex address") from None


def utf8(value: str, field: str) -> bytes:
    """``value`` in UTF-8.

    Raises:
        MemoryRequestError: 422 naming ``field`` when ``value`` holds a lone surrogate.
    """
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            check_text(value, "")
        except ValueError as e:
            raise InvalidRequestError(field, str(e)) from None
        raise


def parse_id(value: str, field: str = "id") -> bytes:
    """``0x``-prefixed 32-byte hex item id to bytes.

    Raises:
        MemoryRequestError: malformed (400 naming ``field``).
    """
    v = value[2:] if value[:2].lower() == "0x" else value
    try:
        b = bytes.fromhex(v)
    except ValueError:
        b = b""
    if len(b) != 32:
        raise MemoryRequestError(field, f"{value!r} is not a 32-byte hex id")
    return b


def validate_item_fields(c: MemoryConfig, kind: str | None, content: bytes | None, key: str | None,
                         tags: Sequence[str] | None, metadata: Any, ttl_seconds: int | None,
                         ttl_blocks: int | None) -> None:
    """Check the fields of an item write or of a filter (``None``: not given) against the limits of ``c``.

    Raises:
        MemoryRequestError: naming the field: an unknown kind (422), content or metadata over
            ``max_content_bytes`` (413), a key over :data:`MAX_KEY_LEN` characters, more than :data:`MAX_TAGS` tags
            or one over :data:`MAX_TAG_LEN`, metadata that is not a JSON object, a TTL out of range, on an item
            that is not working memory, or both TTLs at once (422).
    """
    if kind is not None and kind not in KINDS:
        raise InvalidRequestError("kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")
    if content is not None and len(content) > c.max_content_bytes:
        raise TooLargeError("content", f"{len(content)} bytes exceeds the limit of {c.max_content_bytes}")
    if key is not None and len(key) > MAX_KEY_LEN:
        raise InvalidRequestError("key", f"longer than {MAX_KEY_LEN} characters")
    if tags is not None:
        if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
            raise InvalidRequestError("tags", "must be a list of strings")
        if len(tags) > MAX_TAGS or any(len(t) > MAX_TAG_LEN or not t for t in tags):
            raise InvalidRequestError("tags", f"at most {MAX_TAGS} non-empty tags of up to {MAX_TAG_LEN} characters")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequestError("metadata", "must be a JSON object")
    try:  # valid Unicode, finite numbers, bounded nesting: what every reader of the item can encode again
        check_json_value({"key": key, "tags": list(tags or ()), "metadata": metadata}, "")
    except ValueError as e:
        field, _, msg = str(e).partition(": ")
        raise InvalidRequestError(field, msg) from None
    if metadata is not None and len(canonical_json(metadata).encode()) > c.max_content_bytes:
        raise TooLargeError("metadata", f"larger than {c.max_content_bytes} bytes")
    for name, v, mx in (("ttl_seconds", ttl_seconds, c.max_ttl_seconds), ("ttl_blocks", ttl_blocks,
                                                                          c.max_ttl_blocks)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v > mx:
            raise InvalidRequestError(name, f"must be an integer between 1 and {mx} (got {v!r})")
        if kind is not None and kind != "working":
            raise InvalidRequestError(name, "only working memory expires")
    if ttl_seconds and ttl_blocks:
        raise InvalidRequestError("ttl_blocks", "give ttl_seconds or ttl_blocks, not both")

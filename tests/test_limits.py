"""``monmouth.limits``: the streaming body scan agrees with a byte-by-byte reading of JSON's string and bracket
rules however the body is cut into chunks (hypothesis), and parsed values are refused naming the member at fault.
The scan inside a running sidecar is ``tests/test_security.py``."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monmouth.limits import BodyRefused, JsonScanner, check_json_value


def reference_depth(body: bytes) -> int | None:
    """Deepest nesting outside strings, byte by byte; ``None`` when a bracket closes below zero."""
    depth = deepest = 0
    in_string = escaped = False
    for c in body:
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:
                escaped = True
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in b"]}":
            depth -= 1
            if depth < 0:
                return None
    return deepest


def scan(chunks: list[bytes], limit: int) -> bool:
    s = JsonScanner(limit)
    try:
        for c in chunks:
            s.feed(c)
        s.close()
    except BodyRefused:
        return False
    return True


@settings(max_examples=500, deadline=None)
@given(body=st.binary(max_size=80).map(lambda b: bytes(b"[]{}\"\\ax"[x % 8] for x in b)),
       cuts=st.lists(st.integers(0, 80), max_size=6), limit=st.integers(1, 6))
def test_the_scan_agrees_with_a_byte_by_byte_reading_whatever_the_chunks(body, cuts, limit):
    points = sorted({0, len(body), *(c for c in cuts if c <= len(body))})
    chunks = [body[a:b] for a, b in itertools.pairwise(points)]
    d = reference_depth(body)
    assert scan(chunks, limit) == (d is not None and d <= limit), (body, chunks)


def test_the_issues_body_and_utf8():
    assert not scan([b"[" * 100_000 + b"]" * 100_000], 64)
    assert scan([json.dumps({"a": "[" * 10_000}).encode()], 64)  # brackets in strings are text
    assert not scan([b'{"a": "\xff"}'], 64)  # not UTF-8
    assert scan([b'{"a": "\xe2\x82', b'\xac"}'], 64)  # a character cut between chunks
    assert not scan([b'{"a": "\xe2\x82'], 64)  # ... or cut short


@pytest.mark.parametrize("value,where", [
    ({"x": float("nan")}, "metadata.x"),
    ({"x": [1, float("inf")]}, "metadata.x.1"),
    ({"x": "a\ud800"}, "metadata.x"),
    ({"\udc00": 1}, "metadata key"),
    ({"x": b"bytes"}, "metadata.x"),
])
def test_check_json_value_names_the_member(value, where):
    with pytest.raises(ValueError, match=rf"^{where.replace('.', '[.]')}: "):
        check_json_value(value, "metadata")


def test_check_json_value_bounds_nesting():
    v: dict = {"leaf": 1}
    for _ in range(31):
        v = {"a": v}
    assert check_json_value(v, "meta") is v  # 32 levels
    with pytest.raises(ValueError, match="nested deeper than 32 levels"):
        check_json_value({"a": v}, "meta")

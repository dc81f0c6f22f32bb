"""Replay files: recorded notifications, for tests, demos and reproducing bugs (format in ``docs/wire.md``).

Layout: the 5 ASCII bytes ``MNMRP`` and a format version byte (``0x01``), then frames of
``u32 length (big-endian) | u32 CRC-32 of the payload (IEEE, zlib.crc32) | payload``, where each payload is
one msgpack ``notification`` message. The Rust ``bridge-replay`` reads the same files.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .codec import MAX_FRAME_BYTES, decode_notification, encode_notification
from .errors import CodecError
from .types import Notification

MAGIC = b"MNMRP"
VERSION = 1
HEADER = MAGIC + bytes([VERSION])
_FRAME = struct.Struct(">II")


class ReplayFormatError(CodecError):
    """A replay file is damaged. Attributes ``frame`` (0-based index) and ``offset`` (byte offset of the frame)."""

    def __init__(self, path: str, frame: int, offset: int, problem: str) -> None:
        super().__init__(f"{path}: frame {frame} at byte offset {offset}: {problem}")
        self.frame = frame
        self.offset = offset


class ReplayWriter:
    """Append notifications to a replay file (created with its header if new).

    Each frame is flushed as written, so a recording killed mid-way leaves every complete frame readable.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._f: BinaryIO = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        if new:
            self._f.write(HEADER)
        self.frames = 0

    def write(self, notification: Notification, seq: int = 0) -> int:
        """Append one notification; returns the frame's size in bytes."""
        payload = encode_notification(notification, seq)
        return self.write_payload(payload)

    def write_payload(self, payload: bytes) -> int:
        self._f.write(_FRAME.pack(len(payload), zlib.crc32(payload)) + payload)
        self._f.flush()
        self.frames += 1
        return len(payload) + _FRAME.size

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ReplayWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_frames(path: str | Path, max_bytes: int = MAX_FRAME_BYTES) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(index, offset, payload)`` for each frame, checking length and CRC.

    Raises:
        ReplayFormatError: bad header, truncated frame, oversized frame or CRC mismatch, naming the frame and
            its offset. Frames before it have been yielded.
    """
    p = str(path)
    with open(path, "rb") as f:
        head = f.read(len(HEADER))
        if head[: len(MAGIC)] != MAGIC:
            raise ReplayFormatError(p, 0, 0, f"not a replay file (header {head!r}, expected {HEADER!r})")
        if len(head) < len(HEADER) or head[len(MAGIC)] > VERSION:
            raise ReplayFormatError(p, 0, 0, f"unsupported replay format version {head[len(MAGIC):]!r}")
        offset, index = len(HEADER), 0
        while True:
            fh = f.read(_FRAME.size)
            if not fh:
                return
            if len(fh) < _FRAME.size:
                raise ReplayFormatError(p, index, offset, f"truncated frame header ({len(fh)} of {_FRAME.size} bytes)")
            length, crc = _FRAME.unpack(fh)
            if length > max_bytes:
                raise ReplayFormatError(p, index, offset, f"frame length {length} exceeds the limit of {max_bytes}")
            payload = f.read(length)
            if len(payload) < length:
                raise ReplayFormatError(p, index, offset, f"truncated frame ({len(payload)} of {length} bytes)")
            if zlib.crc32(payload) != crc:
                raise ReplayFormatError(p, index, offset, f"CRC mismatch (stored {crc:#010x}, "
                                                          f"computed {zlib.crc32(payload):#010x})")
            yield index, offset, payload
            offset += _FRAME.size + length
            index += 1


def read_notifications(path: str | Path) -> Iterator[tuple[int, Notification, int]]:
    """Yield ``(frame_index, notification, size_bytes)``.

    Raises:
        ReplayFormatError: a damaged frame or an undecodable message (naming frame, offset and field).
    """
    for index, offset, payload in read_frames(path):
        try:
            _seq, n = decode_notification(payload)
        except CodecError as e:
            raise ReplayFormatError(str(path), index, offset, str(e)) from None
        yield index, n, len(payload)


def count_frames(path: str | Path) -> int:
    """How many frames the file holds, reading only frame headers (stops quietly at a damaged tail)."""
    n = 0
    with open(path, "rb") as f:
        f.seek(len(HEADER))
        while True:
            fh = f.read(_FRAME.size)
            if len(fh) < _FRAME.size:
                return n
            length, _crc = _FRAME.unpack(fh)
            f.seek(length, 1)
            n += 1

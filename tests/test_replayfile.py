"""Replay files and the replay source: round trip, resume after the last committed frame, and corrupt frames
refused with the frame index and byte offset while the cursor stays where it was."""

from __future__ import annotations

import pytest

from monmouth.errors import SourceError
from monmouth.replayfile import HEADER, ReplayFormatError, ReplayWriter, read_frames, read_notifications
from monmouth.runner import Runner
from monmouth.sources.replay import ReplaySource
from monmouth.types import ChainCommitted, ChainReorged, ChainReverted
from tests.chains import chain, extend
from tests.conftest import settings_for
from tests.plugins import ledger
from tests.test_engine import dump

pytestmark = pytest.mark.anyio


def history():
    """commit 1-6, reorg 5-6 -> 5'-7', revert 7', commit 7''-8''."""
    bs = extend(None, 6, number=1, n_txs=3)
    fork = extend(bs[3], 3, salt="fork", n_txs=2)
    tail = extend(fork[1], 2, salt="tail", n_txs=1)
    return [
        ChainCommitted(chain(bs[:3])), ChainCommitted(chain(bs[3:])),
        ChainReorged(chain(bs[4:]), chain(fork)), ChainReverted(chain(fork[2:])), ChainCommitted(chain(tail)),
    ], bs[:4] + fork[:2] + tail


def write(path, notes):
    with ReplayWriter(path) as w:
        for i, n in enumerate(notes):
            w.write(n, seq=i + 1)


def test_round_trip(tmp_path):
    notes, _ = history()
    write(tmp_path / "h.mnr", notes)
    got = [n for _, n, _ in read_notifications(tmp_path / "h.mnr")]
    assert got == notes


async def replay(app, path):
    runner = Runner(app, ReplaySource(path), serve_http=False, watch_config=False)
    await runner.run()
    return runner


async def test_replay_applies_history_and_resumes_after_last_frame(tmp_path):
    from monmouth.app import open_app

    notes, canonical = history()
    write(tmp_path / "h.mnr", notes)
    app = open_app(settings=settings_for(tmp_path / "db.sqlite", {"ledger": ledger}), extra_plugins={"ledger": ledger})
    await replay(app, tmp_path / "h.mnr")
    assert app.engine.head == canonical[-1].ref
    assert app.engine.source_token == {"file": str((tmp_path / "h.mnr").resolve()), "frame": 4}
    before = dump(app.engine.conn)
    # Replaying the same file again resumes after frame 4: nothing is applied twice, nothing is refused.
    await replay(app, tmp_path / "h.mnr")
    assert dump(app.engine.conn) == before and app.engine.notifications_seen == 5
    app.close()


async def test_unpaced_replay_is_group_committed_and_equals_one_by_one(tmp_path):
    from monmouth.app import open_app

    notes, canonical = history()
    more = extend(canonical[-1], 40, n_txs=2)
    notes += [ChainCommitted(chain([b])) for b in more]
    write(tmp_path / "h.mnr", notes)
    apps = []
    for name, rate in (("grouped", 0.0), ("paced", 1000.0)):
        app = open_app(settings=settings_for(tmp_path / f"{name}.sqlite", {"ledger": ledger}),
                       extra_plugins={"ledger": ledger})
        source = ReplaySource(tmp_path / "h.mnr", rate=rate)
        await Runner(app, source, serve_http=False, watch_config=False).run()
        sample = app.metrics.registry.get_sample_value
        assert sample("monmouth_commit_notifications_sum") == len(notes) == source.frames_delivered
        apps.append((app, sample("monmouth_commit_notifications_count")))
    (grouped, grouped_commits), (paced, paced_commits) = apps
    # Read ahead in chunks, the unpaced replay shares transactions; paced, it commits one notification each.
    assert grouped_commits < len(notes) // 2 and paced_commits == len(notes)
    assert grouped.engine.head == paced.engine.head == more[-1].ref
    assert dump(grouped.engine.conn) == dump(paced.engine.conn)
    for app, _ in apps:
        app.close()


@pytest.mark.parametrize("damage", ["crc", "truncate", "garbage_payload", "header"])
async def test_corrupt_frame_is_refused_naming_it_and_cursor_stays(tmp_path, damage):
    from monmouth.app import open_app

    notes, canonical = history()
    path = tmp_path / "h.mnr"
    write(path, notes)
    frames = list(read_frames(path))
    idx, offset, payload = frames[2]
    raw = bytearray(path.read_bytes())
    if damage == "crc":
        raw[offset + 8 + 10] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: offset + 8 + len(payload) // 2]
    elif damage == "garbage_payload":
        import struct
        import zlib

        junk = b"\xc1" * 16  # 0xc1 is never used in msgpack
        raw[offset: offset + 8 + len(payload)] = struct.pack(">II", len(junk), zlib.crc32(junk)) + junk
        del raw[offset + 8 + len(junk):]
    else:
        raw[:6] = b"NOTMNR"
    path.write_bytes(bytes(raw))
    app = open_app(settings=settings_for(tmp_path / "db.sqlite", {"ledger": ledger}), extra_plugins={"ledger": ledger})
    with pytest.raises(SourceError) as ei:
        await replay(app, path)
    msg = str(ei.value)
    if damage == "header":
        assert "not a replay file" in msg and app.engine.head is None
    else:
        assert f"frame 2 at byte offset {offset}" in msg
        assert {"crc": "CRC mismatch", "truncate": "truncated", "garbage_payload": "not valid msgpack"}[damage] in msg
        # Frames 0 and 1 were applied; the cursor stays at their tip.
        assert app.engine.head == notes[1].new.tip.ref
    app.close()


def test_bad_header_version(tmp_path):
    p = tmp_path / "v9.mnr"
    p.write_bytes(HEADER[:-1] + b"\x09")
    with pytest.raises(ReplayFormatError, match="unsupported replay format version"):
        list(read_frames(p))

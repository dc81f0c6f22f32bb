"""A test plugin that takes 5 ms per block (tests/test_reth.py) (as a plugin doing real work would), so that a test can watch progress."""

from __future__ import annotations

import time
from typing import Any

from monmouth import hookimpl


@hookimpl
def monmouth_block_applied(conn: Any, block: Any, notification: Any) -> None:
    time.sleep(0.005)

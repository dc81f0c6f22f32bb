"""A plugin that makes each block take ``MONMOUTH_TEST_BLOCK_DELAY`` seconds to apply (default 0.02), so that a
``kill -9`` lands while notifications are still being applied and outbox jobs delivered."""

from __future__ import annotations

import os
import time
from typing import Any

from monmouth import hookimpl


@hookimpl
def monmouth_block_applied(conn: Any, block: Any, notification: Any) -> None:
    time.sleep(float(os.environ.get("MONMOUTH_TEST_BLOCK_DELAY", "0.02")))

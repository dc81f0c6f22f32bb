"""A test plugin that makes each block take a while to apply, so that a signal lands while a notification is in
flight. ``SLOW_PLUGIN_SECONDS`` (environment) is the time per block; when ``SLOW_PLUGIN_MARK`` names a file, the
block number is appended to it (a line per block) as its application starts."""

from __future__ import annotations

import os
import time

from monmouth import hookimpl


@hookimpl
def monmouth_block_applied(conn, block, notification):
    mark = os.environ.get("SLOW_PLUGIN_MARK")
    if mark:
        with open(mark, "a") as f:
            f.write(f"{block.number}\n")
    time.sleep(float(os.environ.get("SLOW_PLUGIN_SECONDS", "0")))

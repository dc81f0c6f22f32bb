"""systemd's service notification protocol (``sd_notify(3)``): readiness, stopping, status and watchdog pings.

Under a ``Type=notify`` unit, systemd passes ``NOTIFY_SOCKET``, the address of an ``AF_UNIX`` datagram socket; each
notification is one datagram of newline-separated ``KEY=VALUE`` fields (``READY=1``, ``STOPPING=1``, ``STATUS=...``,
``WATCHDOG=1``). An address starting with ``@`` is in the abstract namespace (``@`` stands for the leading NUL
byte). With ``WatchdogSec=`` the unit also passes ``WATCHDOG_USEC`` (the timeout, microseconds) and
``WATCHDOG_PID`` (the process expected to ping; another process must not); ``sd_watchdog_enabled(3)`` asks for a
ping at least every half of it.

What the sidecar tells systemd (:meth:`sidecar.runner.Runner._tell_systemd`):

- ``READY=1`` once, the first time it is ready by the same test as ``/ready`` (:meth:`Runner.ready`): the unit is
  "activating" until then, so units ordered after it start once the index is caught up;
- ``STATUS=`` the reason it is not ready, or its head, whenever that line changes (``systemctl status`` shows it);
- ``WATCHDOG=1`` every half watchdog interval (at most every second) while its event loop runs;
- ``STOPPING=1`` on SIGTERM/SIGINT, when the graceful stop begins.

Without ``NOTIFY_SOCKET`` (not under systemd, or another ``Type=``) nothing is sent. A notification that cannot be
sent (the socket is gone) is logged once and never stops the sidecar.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to one ``NOTIFY_SOCKET``; make it with :meth:`from_environ`.

    Attributes:
        address: the socket's address (``str`` path, or ``bytes`` starting with NUL for the abstract namespace).
        watchdog: the watchdog timeout in seconds when this process is to ping it, else ``None``.
    """

    def __init__(self, address: str | bytes, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier | None:
        """The notifier ``environ`` (default: ``os.environ``) asks for, ``None`` without ``NOTIFY_SOCKET``.

        A ``WATCHDOG_USEC`` that is not a positive integer, or a ``WATCHDOG_PID`` naming another process, leaves
        the watchdog off (as ``sd_watchdog_enabled(3)`` does); an address of another family (``vsock:``) is logged
        and ignored.
        """
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        if not raw:
            return None
        if not raw.startswith(("/", "@")):
            log.warning("NOTIFY_SOCKET=%s: only AF_UNIX addresses are supported; not notifying systemd", raw)
            return None
        address: str | bytes = b"\0" + raw[1:].encode() if raw.startswith("@") else raw
        watchdog: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog = int(usec) / 1e6
        return cls(address, watchdog)

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ...) as one datagram. Returns whether it was sent."""
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as e:
            if not self._failed:
                log.warning("systemd notification to %s failed: %s (further failures are not logged)",
                            self.address, e)
                self._failed = True
            return False
        return True

    def close(self) -> None:
        self._sock.close()

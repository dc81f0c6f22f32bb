"""A standard input that a graceful stop can end: for ``monmouth mcp``, whose MCP library reads fd 0 in a thread.

The official ``mcp`` SDK's stdio transport reads standard input line by line in a worker thread; cancelling the
server waits for that read, which returns only when the client sends a line or closes its end. So a SIGTERM could
not stop ``monmouth mcp`` while its client kept the pipe open (an agent runtime usually does).

:func:`relayed_stdin` puts a pipe on fd 0 for the duration of the server and feeds it from the real standard input
with a task of the event loop (``anyio.wait_readable``, cancellable). Ending the feed closes the pipe's write end:
the library's reader sees end of file, exactly as when the client closes standard input, and the server takes its
ordinary end-of-file path (in-flight tool calls are cancelled; each one's database writes are one transaction,
so they commit whole or roll back). The real standard input is put back on fd 0 afterwards.

Invariants:

- Bytes are relayed unchanged and in order; nothing read from the real standard input is dropped while the feed
  runs (what the client sends after the stop is left unread in its pipe, as a stopped process would).
- The real standard input's file status flags are untouched (``O_NONBLOCK`` would be shared with the parent,
  e.g. a shell's terminal); only the relay pipe's own write end is non-blocking.
- Standard input that cannot be polled (a regular file, ``/dev/null``) never blocks, so it is read directly.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel

CHUNK = 65536


class Relay:
    """The running feed; :meth:`close` ends it (the readers of fd 0 see end of file). Idempotent."""

    def __init__(self, real: int, write_end: int, scope: anyio.CancelScope) -> None:
        self._real = real
        self._w = write_end
        self._scope = scope

    def close(self) -> None:
        """End the feed now: the pipe's readers get end of file once they have read what was relayed before."""
        self._scope.cancel()
        if self._w >= 0:
            with contextlib.suppress(OSError):
                os.close(self._w)
            self._w = -1

    async def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._w, view):]
            except BlockingIOError:
                await anyio.wait_writable(self._w)

    async def _read(self, pollable: bool) -> bytes:
        if pollable:
            await anyio.wait_readable(self._real)
        else:
            await anyio.lowlevel.checkpoint()
        return os.read(self._real, CHUNK)

    async def run(self) -> None:
        """Copy the real standard input into the pipe until end of file (then close it) or :meth:`close`."""
        pollable = True
        with self._scope:
            while True:
                try:
                    data = await self._read(pollable)
                except PermissionError:  # epoll refuses regular files and some devices: they never block
                    pollable = False
                    continue
                except OSError as e:
                    if e.errno != errno.EIO:  # a terminal gone away reads as EIO: end of file
                        raise
                    data = b""
                if not data:
                    break
                await self._write_all(data)
        self.close()


@contextlib.asynccontextmanager
async def relayed_stdin() -> AsyncIterator[Relay]:
    """Run with a relay pipe on fd 0 fed from the real standard input (see the module's docstring).

    Yields the :class:`Relay`; call ``close()`` to make fd 0 read end of file. On leaving, the feed stops and the real
    standard input is put back on fd 0.

    Raises:
        OSError: no file descriptors left (EMFILE) for the pipe and the duplicate of standard input.
    """
    real = os.dup(0)
    r, w = os.pipe()
    os.set_blocking(w, False)
    os.dup2(r, 0)  # fd 0 stays inheritable, like the standard input it stands for
    os.close(r)
    relay = Relay(real, w, anyio.CancelScope())
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay.run)
            try:
                yield relay
            finally:
                relay.close()
    finally:
        os.dup2(real, 0)
        os.close(real)

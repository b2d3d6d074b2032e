"""Network faults between a Ferry process and a real service, for outage tests.

``TcpProxy`` listens on a local port and forwards to the service. The test switches it between:

- ``forward()``: pass bytes both ways;
- ``cut()``: every open connection is closed and new ones are refused (the service went away);
- ``blackhole()``: open connections stay open and new ones are accepted, but nothing is forwarded either way
  (a service behind a dead route: only timeouts notice).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from typing import Any, Literal

Mode = Literal["forward", "cut", "blackhole"]


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.mode: Mode = "forward"
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self._call(self._listen())

    def _call(self, work: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(10)

    async def _listen(self) -> None:
        if self._flowing is None:
            self._flowing = asyncio.Event()
        self._flowing.set()
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                assert self._flowing is not None
                await self._flowing.wait()  # held while blackholed
                if self.mode == "cut":
                    break
                writer.write(data)
                await writer.drain()
        writer.close()
        self._writers.discard(writer)

    def forward(self) -> None:
        self.mode = "forward"
        self._call(self._listen())

    def cut(self) -> None:
        """Close every open connection and refuse new ones."""

        async def cut() -> None:
            self.mode = "cut"
            if self._flowing is not None:
                self._flowing.set()  # held pipes wake up and end
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._writers):
                with contextlib.suppress(OSError):
                    writer.transport.abort()
            self._writers.clear()

        self._call(cut())

    def blackhole(self) -> None:
        async def hold() -> None:
            self.mode = "blackhole"
            if self._flowing is not None:
                self._flowing.clear()

        self._call(hold())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

"""A loopback TCP proxy that can cut its websocket connections, as a server or a network would.

The page talks to daphne through it, so a test can drop a live socket from
the far side while the proxy keeps accepting the page's reconnects.
"""

import asyncio
import threading
from dataclasses import dataclass


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    websocket: bool = False

    def abort(self) -> None:
        self.client.transport.abort()
        self.server.transport.abort()


class TcpProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self.websockets_opened = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "TcpProxy":
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def drop_websockets(self) -> int:
        """Abort every proxied websocket connection, both ends at once; how many there were."""
        return self._call(self._drop_websockets())

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(5)

    async def _drop_websockets(self) -> int:
        doomed = [link for link in self._links if link.websocket]
        for link in doomed:
            link.abort()
        return len(doomed)

    async def _shutdown(self) -> None:
        self._server.close()
        for link in list(self._links):
            link.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, server_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(reader, server_writer, link), self._pump(server_reader, writer, None)
            )
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, watch: _Link | None) -> None:
        # `watch` is set on the browser-to-server direction, where an upgrade request shows.
        try:
            while data := await reader.read(65536):
                if watch is not None and not watch.websocket and b"upgrade: websocket" in data.lower():
                    watch.websocket = True
                    self.websockets_opened += 1
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            # One side hung up: so does the other (no half-open connections to reason about).
            writer.close()

"""An httpcore network backend on asyncio's own transports, for the upstream streams.

httpx reaches the network through httpcore's anyio backend, which pauses a socket's
reading after every chunk and resumes it on the next read: an epoll re-registration
per SSE event, which with hundreds of streams was the largest single cost of the event
loop (the README's benchmark section has the figures). Here a socket stays registered
and what arrives is buffered, reading paused only past a high-water mark, as asyncio's
streams do.
"""

import asyncio
import collections
import contextlib
import socket
import ssl
import urllib.request
from typing import Any

import httpcore
import httpx

HIGH_WATER = 256 * 1024  # buffered bytes past which the socket's reading is paused
LOW_WATER = 64 * 1024


class _Protocol(asyncio.Protocol):
    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.eof = False
        self.error: Exception | None = None
        self.paused = False
        self.waiter: asyncio.Future | None = None
        self.drained: asyncio.Future | None = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes):
        self.chunks.append(data)
        self.size += len(data)
        if self.size > HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self):
        self.eof = True
        self._wake()
        return False  # then the transport closes itself

    def connection_lost(self, exc):
        self.eof = True
        self.error = exc
        self._wake()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self):
        self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self):
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    def _wake(self):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol):
        self._transport, self._protocol = transport, protocol
        self._deadline = 0.0  # of the read waiting now
        self._watchdog: asyncio.TimerHandle | None = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.chunks:
            if protocol.eof:
                return self._at_eof()
            protocol.waiter = asyncio.get_running_loop().create_future()
            if timeout is not None:
                self._time(timeout)
            try:
                await protocol.waiter
            finally:
                protocol.waiter = None
            if not protocol.chunks:
                return self._at_eof()
        data = protocol.chunks.popleft()
        if len(data) > max_bytes:
            protocol.chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        protocol.size -= len(data)
        if protocol.paused and protocol.size < LOW_WATER:
            protocol.paused = False
            self._transport.resume_reading()
        return data

    def _time(self, timeout: float) -> None:
        # One timer per stream, moved on lazily, rather than one per read: a stream
        # waits for each of its many small events, and the deadline only moves later.
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._watchdog = None
        waiter = self._protocol.waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next read sets its own deadline
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            waiter.set_exception(httpcore.ReadTimeout("no data within the read timeout"))
        else:
            self._watchdog = loop.call_at(self._deadline, self._check_deadline)

    def _at_eof(self) -> bytes:
        if self._protocol.error is not None:
            raise httpcore.ReadError(str(self._protocol.error) or type(self._protocol.error).__name__)
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)
        drained = self._protocol.drained
        if drained is not None:
            try:
                async with asyncio.timeout(timeout):
                    await drained
            except TimeoutError:
                raise httpcore.WriteTimeout("could not send within the write timeout") from None

    async def aclose(self) -> None:
        self.abort()

    def abort(self) -> None:
        """Close the connection now, from anywhere on the loop (a stop calls this directly).

        The socket is shut down in this call: a transport's abort() only closes it when the
        loop next turns, which under load is a whole burst of other streams later. And no
        TLS close_notify is waited for: a connection closed here is done with (a stop, or an
        idle one leaving the pool)."""
        sock = self._transport.get_extra_info("socket")
        if sock is not None and sock.fileno() >= 0:
            # Through a duplicate: the transport's own socket object (uvloop's) has no shutdown().
            with contextlib.suppress(OSError), socket.fromfd(sock.fileno(), sock.family, sock.type) as dup:
                dup.shutdown(socket.SHUT_RDWR)
        self._transport.abort()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(self._transport, self._protocol, ssl_context,
                                                 server_hostname=server_hostname)
            self._protocol.transport = transport  # pause and resume the reading of the TLS layer
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("the TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as error:
            self._transport.close()
            raise httpcore.ConnectError(str(error)) from error
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":  # an idle pooled connection the server closed, or wrote to
            return self._protocol.eof or bool(self._protocol.chunks)
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options=None) -> httpcore.AsyncNetworkStream:
        connecting = asyncio.get_running_loop().create_connection(
            _Protocol, host, port, local_addr=(local_address, 0) if local_address else None)
        return await _connected(connecting, f"{host}:{port}", timeout, socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options=None) -> httpcore.AsyncNetworkStream:
        connecting = asyncio.get_running_loop().create_unix_connection(_Protocol, path)
        return await _connected(connecting, path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connected(connecting, where: str, timeout: float | None, socket_options) -> AsyncioStream:
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await connecting
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"could not connect to {where} in time") from None
    except OSError as error:
        raise httpcore.ConnectError(str(error)) from error
    sock = transport.get_extra_info("socket")
    for option in socket_options or ():
        sock.setsockopt(*option)
    return AsyncioStream(transport, protocol)


def upstream_client(limits: httpx.Limits) -> httpx.AsyncClient:
    """An httpx client whose direct connections use AsyncioBackend. With a proxy set in
    the environment, httpx's own transports are kept (they know the proxy schemes)."""
    if urllib.request.getproxies():
        return httpx.AsyncClient(limits=limits, timeout=None)
    transport = httpx.AsyncHTTPTransport(limits=limits)
    # httpx builds its pool without a way to choose the network backend: the same pool, with this one.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=AsyncioBackend(),
    )
    return httpx.AsyncClient(transport=transport, timeout=None)

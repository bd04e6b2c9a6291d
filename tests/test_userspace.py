"""The userspace device (wgpy.UserspaceDevice) as an application uses it:
two devices in this process, peers of each other over loopback UDP, with no
TUN, no namespace and no privileges. Trio streams, listeners, UDP, DNS
through the tunnel, back-pressure, many connections and the errors an
application sees when a peer cannot be reached.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import wgpy
from wgpy.device import DeviceError
from wgpy.userspace import UserspaceDevice

A_ADDR, B_ADDR = "10.77.0.1", "10.77.0.2"
A6_ADDR, B6_ADDR = "fd77::1", "fd77::2"


@asynccontextmanager
async def device_pair(**options: object) -> AsyncIterator[tuple[UserspaceDevice, UserspaceDevice]]:
    """a (10.77.0.1, fd77::1) and b (10.77.0.2, fd77::2), each the other's peer."""
    ka, kb = wgpy.PrivateKey.generate(), wgpy.PrivateKey.generate()
    a = UserspaceDevice(
        "ua", addresses=[f"{A_ADDR}/24", f"{A6_ADDR}/64"], private_key=ka, handover=False, **options
    )  # type: ignore[arg-type]
    b = UserspaceDevice(
        "ub",
        addresses=[f"{B_ADDR}/24", f"{B6_ADDR}/64"],
        private_key=kb,
        handover=False,
        dns_servers=[A_ADDR],
    )
    async with a, b:
        await a.add_peer(
            kb.public_key(),
            endpoint=("127.0.0.1", b.listen_port),
            allowed_ips=[f"{B_ADDR}/32", f"{B6_ADDR}/128"],
        )
        await b.add_peer(
            ka.public_key(),
            endpoint=("127.0.0.1", a.listen_port),
            allowed_ips=[f"{A_ADDR}/32", f"{A6_ADDR}/128"],
        )
        yield a, b


async def echo(stream: trio.abc.Stream) -> None:
    async with stream:
        async for chunk in stream:
            await stream.send_all(chunk)


def test_stream_round_trip_and_listener_both_families() -> None:
    async def main() -> None:
        async with device_pair() as (a, b), trio.open_nursery() as nursery:
            await nursery.start(a.serve_tcp, 7, echo)
            for host in (A_ADDR, A6_ADDR):
                stream = await b.open_tcp_stream(host, 7)
                async with stream:
                    await stream.send_all(b"hello " + host.encode())
                    assert await stream.receive_some(100) == b"hello " + host.encode()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_bulk_transfer_is_exact_with_a_slow_reader() -> None:
    """8 MB one way, read slowly at first: the stack holds at most its
    buffers (back-pressure), and every byte arrives in order."""
    payload = os.urandom(8 << 20)

    async def main() -> None:
        async with device_pair() as (a, b), trio.open_nursery() as nursery:
            listener = a.listen_tcp(5001)

            async def send() -> None:
                stream = await b.open_tcp_stream(A_ADDR, 5001)
                async with stream:
                    await stream.send_all(payload)

            nursery.start_soon(send)
            received = hashlib.sha256()
            total = 0
            async with listener, await listener.accept() as stream:
                await trio.sleep(0.5)  # the reader lags: the sender must wait, not buffer 8 MB
                assert a.netstack.stats()[0] >= 1
                async for chunk in stream:
                    received.update(chunk)
                    total += len(chunk)
            assert total == len(payload)
            assert received.digest() == hashlib.sha256(payload).digest()

    trio.run(main)


def test_many_concurrent_connections_each_exchange_data() -> None:
    async def main() -> None:
        async with device_pair() as (a, b), trio.open_nursery() as nursery:
            await nursery.start(a.serve_tcp, 9, echo)
            done = 0

            async def one(i: int) -> None:
                nonlocal done
                async with await b.open_tcp_stream(A_ADDR, 9) as stream:
                    message = f"connection {i}".encode()
                    await stream.send_all(message)
                    got = b""
                    while len(got) < len(message):
                        got += await stream.receive_some(100)
                    assert got == message
                    done += 1

            async with trio.open_nursery() as clients:
                for i in range(300):
                    clients.start_soon(one, i)
            assert done == 300
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_udp_and_dns_through_the_tunnel() -> None:
    """a answers DNS on its tunnel port 53; b resolves through it."""

    async def dns_server(a: UserspaceDevice, task_status: trio.TaskStatus[None]) -> None:
        async with a.open_udp_socket(53) as sock:
            task_status.started()
            while True:
                query, source = await sock.recvfrom()
                qid = query[:2]
                question = query[12:]
                answer = (
                    question + struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(A_ADDR)
                )
                header = qid + struct.pack(
                    "!HHHHH", 0x8180, 1, 1 if question.endswith(b"\0\x01\0\x01") else 0, 0, 0
                )
                body = answer if question.endswith(b"\0\x01\0\x01") else question
                await sock.sendto(header + body, source)

    async def main() -> None:
        async with device_pair() as (a, b), trio.open_nursery() as nursery:
            await nursery.start(dns_server, a)
            assert await b.resolve("service.example") == [A_ADDR]
            assert await b.resolve("10.1.2.3") == ["10.1.2.3"]
            async with b.open_udp_socket() as sock, a.open_udp_socket(4000) as far:
                await sock.sendto(b"ping", (A_ADDR, 4000))
                data, source = await far.recvfrom()
                assert data == b"ping" and source == (B_ADDR, sock.port)
                await far.sendto(b"pong", source)
                assert await sock.recvfrom() == (b"pong", (A_ADDR, 4000))
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_errors_are_clear_and_prompt() -> None:
    async def main() -> None:
        async with device_pair(connect_timeout=1.5) as (a, b):
            with pytest.raises(ConnectionRefusedError, match="refused"):
                await b.open_tcp_stream(A_ADDR, 1)
            with pytest.raises(OSError, match="AllowedIPs"):
                await b.open_tcp_stream("192.0.2.1", 80)
            with pytest.raises(socket.gaierror):
                await a.open_tcp_stream("no-dns-configured.example", 80)
            with pytest.raises(OSError, match="in use"):
                a.listen_tcp(7000), a.listen_tcp(7000)
        # A peer that never answers: a timeout that says so, not a hang.
        key = wgpy.PrivateKey.generate()
        lonely = UserspaceDevice(
            "uc", addresses=["10.78.0.1/24"], private_key=key, handover=False, connect_timeout=1.5
        )
        with pytest.raises(DeviceError, match="not running"):
            lonely.netstack  # noqa: B018 (the property raises)
        async with lonely:
            await lonely.add_peer(
                wgpy.PrivateKey.generate().public_key(),
                endpoint=("127.0.0.1", 9),
                allowed_ips=["10.78.0.0/24"],
            )
            with trio.fail_after(10), pytest.raises(TimeoutError, match="no handshake"):
                await lonely.open_tcp_stream("10.78.0.2", 80)
            listener = lonely.listen_tcp(8080)
        # Stopped: no wait outlives the stack, and the API says why.
        with trio.fail_after(5):
            with pytest.raises(trio.ClosedResourceError):
                await listener.accept()
            await listener.aclose()
            with pytest.raises(DeviceError, match="not running"):
                await lonely.open_tcp_stream("10.78.0.2", 80)

    trio.run(main)


def test_send_buffer_is_the_embedders_choice() -> None:
    """`tcp_send_buffer` (what a connection may have in flight) is the
    embedder's: a large one carries data exactly, one out of range is a
    clear error when the device opens."""
    payload = os.urandom(4 << 20)

    async def main() -> None:
        async with device_pair(tcp_send_buffer=1 << 20) as (a, b), trio.open_nursery() as nursery:
            listener = b.listen_tcp(5002)

            async def send() -> None:
                async with await a.open_tcp_stream(B_ADDR, 5002) as stream:
                    await stream.send_all(payload)

            nursery.start_soon(send)
            received = bytearray()
            async with listener, await listener.accept() as stream:
                async for chunk in stream:
                    received += chunk
            assert bytes(received) == payload
        bad = UserspaceDevice("ud", addresses=["10.79.0.1/24"], handover=False, tcp_send_buffer=10)
        with pytest.raises(wgpy.DatapathError, match="tcp_send_buffer"):
            async with bad:
                pass

    trio.run(main)

"""`wgpy forward CONFIG --tcp LOCAL=REMOTE ... [--udp LOCAL=REMOTE ...]
[--remote-tcp PORT=LOCAL ...] [--remote-udp PORT=LOCAL ...]`: port forwards
through a WireGuard tunnel as an ordinary user (like onetun), both ways.

- `--tcp 127.0.0.1:8080=10.0.0.2:80`: connections to the local address are
  spliced (in Rust) to connections to the remote address in the tunnel;
  each accepted socket is handed to the stack at once, which resets it if
  the tunnel connection fails.
- `--udp`: datagrams from each local client go out from a tunnel port of
  its own, so replies find their way back; a client idle for UDP_IDLE is
  forgotten, and at most MAX_UDP_CLIENTS are kept (the oldest goes).
- `--remote-tcp 8080=127.0.0.1:80` and `--remote-udp`: a port of the
  tunnel addresses forwarded to a local service (the reverse direction).
- Remote names resolve once, at start, through the tunnel's DNS.
"""

from __future__ import annotations

import argparse
import logging
import socket
from collections import OrderedDict
from dataclasses import dataclass

import trio

from wgpy.proxy_io import listen
from wgpy.rootless import (
    add_stack_arguments,
    bind_family,
    format_address,
    host_port,
    run,
    usage_error,
)
from wgpy.tunnel_udp import TunnelUdpSocket
from wgpy.userspace import UserspaceDevice

log = logging.getLogger("wgpy")

UDP_IDLE = 120.0
MAX_UDP_CLIENTS = 1024


@dataclass(frozen=True)
class Rule:
    """FROM=TO; for the reverse kinds, FROM is a tunnel port."""

    source: tuple[str, int]
    target: tuple[str, int]


def rule(text: str) -> Rule:
    source, sep, target = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected FROM=TO, got {text!r}")
    return Rule(host_port(source), host_port(target))


async def forward_tcp(device: UserspaceDevice, r: Rule, nursery: trio.Nursery) -> str:
    target = (await device.resolve(r.target[0]))[0], r.target[1]
    device._check_route(target[0])
    listener = await listen(r.source)

    def failed(_: int, error: OSError) -> None:
        log.warning("TCP %s: %s", format_address(r.target), error.strerror or error)

    async def accept_loop() -> None:
        with listener:
            while True:
                client, _ = await listener.accept()
                with client:
                    device.stack_events.connect_detached(
                        *target, client.fileno(), failed, device.connect_timeout
                    )

    nursery.start_soon(accept_loop)
    return f"TCP {format_address(listener.getsockname()[:2])} -> {format_address(target)}"


async def forward_udp(device: UserspaceDevice, r: Rule, nursery: trio.Nursery) -> str:
    target = (await device.resolve(r.target[0]))[0], r.target[1]
    local = trio.socket.socket(bind_family(r.source[0]), socket.SOCK_DGRAM)
    await local.bind(r.source)
    clients: OrderedDict[tuple[str, int], tuple[TunnelUdpSocket, trio.CancelScope]] = OrderedDict()

    async def replies(
        client: tuple[str, int], tunnel: TunnelUdpSocket, scope: trio.CancelScope
    ) -> None:
        with scope, tunnel:
            while True:
                with trio.move_on_after(UDP_IDLE) as idle:
                    payload, _ = await tunnel.recvfrom()
                    await local.sendto(payload, client)
                if idle.cancelled_caught and client in clients:
                    del clients[client]
                    return

    async def loop() -> None:
        with local:
            async with trio.open_nursery() as tasks:
                while True:
                    data, client = await local.recvfrom(65535)
                    client = client[:2]
                    if client not in clients:
                        if len(clients) >= MAX_UDP_CLIENTS:
                            _, (_, oldest) = clients.popitem(last=False)
                            oldest.cancel()
                        clients[client] = (device.open_udp_socket(), trio.CancelScope())
                        tasks.start_soon(replies, client, *clients[client])
                    clients.move_to_end(client)
                    await clients[client][0].sendto(data, target)

    nursery.start_soon(loop)
    return f"UDP {format_address(local.getsockname()[:2])} -> {format_address(target)}"


async def remote_tcp(device: UserspaceDevice, r: Rule, nursery: trio.Nursery) -> str:
    port, accepted = device.stack_events.listen(r.source[1])

    async def splice(id_: int) -> None:
        local = trio.socket.socket(bind_family(r.target[0]), socket.SOCK_STREAM)
        with local:
            try:
                await local.connect(r.target)
            except OSError as e:
                log.warning("TCP tunnel port %d -> %s: %s", port, format_address(r.target), e)
                device.netstack.abort(id_)
                return
            device.netstack.attach(id_, local.fileno())

    async def loop() -> None:
        async with trio.open_nursery() as tasks:
            async for connection in accepted:
                tasks.start_soon(splice, connection.id)

    nursery.start_soon(loop)
    return f"TCP tunnel port {port} -> {format_address(r.target)}"


async def remote_udp(device: UserspaceDevice, r: Rule, nursery: trio.Nursery) -> str:
    tunnel = device.open_udp_socket(r.source[1])
    peers: OrderedDict[tuple[str, int], trio.socket.SocketType] = OrderedDict()

    async def replies(peer: tuple[str, int], local: trio.socket.SocketType) -> None:
        with local:
            while True:
                with trio.move_on_after(UDP_IDLE) as idle:
                    payload = await local.recv(65535)
                    await tunnel.sendto(payload, peer)
                if idle.cancelled_caught:
                    peers.pop(peer, None)
                    return

    async def loop() -> None:
        with tunnel:
            async with trio.open_nursery() as tasks:
                while True:
                    data, peer = await tunnel.recvfrom()
                    if peer not in peers:
                        if len(peers) >= MAX_UDP_CLIENTS:
                            peers.popitem(last=False)[1].close()
                        local = trio.socket.socket(bind_family(r.target[0]), socket.SOCK_DGRAM)
                        await local.connect(r.target)
                        peers[peer] = local
                        tasks.start_soon(replies, peer, local)
                    peers.move_to_end(peer)
                    try:
                        await peers[peer].send(data)
                    except OSError:
                        pass  # ICMP from the local service: UDP drops it

    nursery.start_soon(loop)
    return f"UDP tunnel port {tunnel.port} -> {format_address(r.target)}"


DESCRIPTION = (
    "Port forwards through the WireGuard tunnel of a wg-quick file, "
    "with a userspace network stack (no root, no TUN)."
)
_RULES = (
    ("--tcp", "LOCAL_HOST:PORT=REMOTE_HOST:PORT", "a local TCP port to a tunnel address"),
    ("--udp", "LOCAL_HOST:PORT=REMOTE_HOST:PORT", "a local UDP port to a tunnel address"),
    ("--remote-tcp", "TUNNEL_PORT=LOCAL_HOST:PORT", "a TCP port in the tunnel to a local one"),
    ("--remote-udp", "TUNNEL_PORT=LOCAL_HOST:PORT", "a UDP port in the tunnel to a local one"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`wgpy forward`'s arguments (the `wgpy` parser and `main` share them)."""
    parser.add_argument("config", help="wg-quick configuration file (Address is required)")
    for option, metavar, text in _RULES:
        parser.add_argument(
            option, type=rule, action="append", default=[], metavar=metavar, help=text
        )
    add_stack_arguments(parser)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wgpy forward", description=DESCRIPTION)
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Runs the forwards until SIGINT/SIGTERM; 2 for a usage error."""
    kinds = (
        (forward_tcp, args.tcp),
        (forward_udp, args.udp),
        (remote_tcp, args.remote_tcp),
        (remote_udp, args.remote_udp),
    )
    if not any(rules for _, rules in kinds):
        return usage_error(
            "forward", "give at least one --tcp, --udp, --remote-tcp or --remote-udp"
        )

    async def serve(device: UserspaceDevice, nursery: trio.Nursery) -> str:
        parts = [await start(device, r, nursery) for start, rules in kinds for r in rules]
        return "wgpy forward: " + "; ".join(parts)

    return run("forward", args.config, serve, args.tcp_send_buffer)

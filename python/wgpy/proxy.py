"""`wgpy proxy CONFIG --socks5 HOST:PORT [--http HOST:PORT]`: SOCKS5 and
HTTP proxies into a WireGuard tunnel, as an ordinary user (like wireproxy).

- SOCKS5 (RFC 1928), no authentication: CONNECT to an address or a name
  (socks5h: the name is resolved by the tunnel's DNS servers, never
  locally), and UDP ASSOCIATE (unfragmented datagrams, from the client's
  own address only).
- HTTP: CONNECT tunnels, and plain requests in absolute form
  (`GET http://host/path`), sent on in origin form with `Connection: close`.
- Only the request is read here, byte for byte (nothing past it is
  consumed); then the client's socket is handed to the stack, which splices
  it to the TCP connection in Rust.
- A failed connection gets the protocol's error reply (SOCKS5 codes 1-8,
  HTTP 400/502/504); a client that does not finish its request within
  REQUEST_TIMEOUT is dropped.
"""

from __future__ import annotations

import argparse

import trio

from wgpy import http_proxy, socks5
from wgpy.proxy_io import accept_loop, listen
from wgpy.rootless import add_stack_arguments, format_address, host_port, run, usage_error
from wgpy.userspace import UserspaceDevice

DESCRIPTION = (
    "SOCKS5 and HTTP proxies into the WireGuard tunnel of a wg-quick file, "
    "with a userspace network stack (no root, no TUN)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`wgpy proxy`'s arguments (the `wgpy` parser and `main` share them)."""
    parser.add_argument("config", help="wg-quick configuration file (Address is required)")
    parser.add_argument(
        "--socks5", type=host_port, metavar="HOST:PORT", help="SOCKS5 listen address"
    )
    parser.add_argument(
        "--http", type=host_port, metavar="HOST:PORT", help="HTTP proxy listen address"
    )
    add_stack_arguments(parser)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wgpy proxy", description=DESCRIPTION)
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """Runs the proxies until SIGINT/SIGTERM; 2 for a usage error."""
    if args.socks5 is None and args.http is None:
        return usage_error("proxy", "give --socks5 HOST:PORT, --http HOST:PORT or both")

    async def serve(device: UserspaceDevice, nursery: trio.Nursery) -> str:
        parts = []
        for name, address, handler in (
            ("SOCKS5", args.socks5, socks5.handle),
            ("HTTP", args.http, http_proxy.handle),
        ):
            if address is not None:
                listener = await listen(address)
                nursery.start_soon(accept_loop, listener, handler, device)
                parts.append(f"{name} on {format_address(listener.getsockname()[:2])}")
        tunnel = ", ".join(str(a) for a in device.addresses)
        return f"wgpy proxy: {' and '.join(parts)} (tunnel {tunnel})"

    return run("proxy", args.config, serve, args.tcp_send_buffer)

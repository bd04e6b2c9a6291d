"""What `wgpy proxy` and `wgpy forward` share: address arguments, loading
the wg-quick file, and running a userspace device until SIGINT/SIGTERM.

Both run as an ordinary user: the device has a userspace stack inside
(wgpy.userspace), so nothing needs privileges. They print one line saying
what they listen on once every listener is bound, and exit 0 on a signal;
a configuration or bind error is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import trio

from wgpy._core import DatapathError
from wgpy.config import Config, ConfigError, load
from wgpy.userspace import DEFAULT_TCP_SEND_BUFFER, UserspaceDevice

# Sets up the listeners and returns the "listening on" line.
Serve = Callable[[UserspaceDevice, trio.Nursery], Awaitable[str]]

# What the user can act on: said in one line, exit status 1 (anything else
# is a bug, and its traceback is kept).
_ONE_LINE_ERRORS = (ConfigError, OSError, ValueError, DatapathError)


def host_port(text: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or PORT (loopback), for argparse."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port in {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, number


def usage_error(command: str, message: str) -> int:
    """A usage error as every `wgpy` command reports one: one line, status 2."""
    print(f"wgpy {command}: {message} (see `wgpy {command} --help`)", file=sys.stderr)
    return 2


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def bind_family(host: str) -> int:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    """The userspace stack's tuning, the same for both commands."""
    parser.add_argument(
        "--tcp-send-buffer",
        type=int,
        default=DEFAULT_TCP_SEND_BUFFER,
        metavar="BYTES",
        help="bytes each TCP connection may have in flight into the tunnel "
        f"(default {DEFAULT_TCP_SEND_BUFFER}; raise it for a long path: a flow gets "
        "about this much per round trip)",
    )


def load_config(path: str) -> Config:
    config = load(path)
    if not config.interface.addresses:
        raise ConfigError("the [Interface] needs an Address for the userspace stack", path=path)
    return config


async def _run(config: Config, serve: Serve, tcp_send_buffer: int) -> None:
    device_cm = UserspaceDevice.from_config(config, tcp_send_buffer=tcp_send_buffer)
    async with device_cm as device, trio.open_nursery() as nursery:
        # Signals are caught before the line is printed: a supervisor that
        # signals as soon as it reads it gets a clean exit.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            line = await serve(device, nursery)
            print(line, flush=True)
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def run(
    command: str,
    config_path: str,
    serve: Serve,
    tcp_send_buffer: int = DEFAULT_TCP_SEND_BUFFER,
) -> int:
    levels = {"debug": logging.DEBUG, "verbose": logging.INFO, "error": logging.ERROR}
    level = levels.get(os.environ.get("LOG_LEVEL", ""), logging.WARNING)
    logging.basicConfig(level=level, format=f"wgpy {command}: %(message)s")
    try:
        config = load_config(config_path)
        trio.run(_run, config, serve, tcp_send_buffer)
    except _ONE_LINE_ERRORS as e:
        print(f"wgpy {command}: {e}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        # A listener that cannot bind fails inside the nursery: one line too.
        leaf = _only_error(group)
        if not isinstance(leaf, _ONE_LINE_ERRORS):
            raise
        print(f"wgpy {command}: {leaf}", file=sys.stderr)
        return 1
    return 0


def _only_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    errors = list(group.exceptions)
    if len(errors) != 1:
        return None
    leaf = errors[0]
    return _only_error(leaf) if isinstance(leaf, BaseExceptionGroup) else leaf

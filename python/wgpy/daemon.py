"""`wgpy IFACE`: the userspace WireGuard daemon, as `wireguard-go IFACE` behaves.

- Creates the TUN interface and the UAPI socket, then detaches into the
  background; the launching process exits 0 only once the socket accepts
  connections (wg-quick runs `wg setconf` right after it returns), 1 if
  setup failed, with the reason on stderr.
- `-f`/`--foreground` or WG_PROCESS_FOREGROUND=1 keep it in the foreground.
- LOG_LEVEL=verbose|debug|error|silent sets verbosity.
- `--no-handover` or WGPY_HANDOVER=0 turn off following underlay changes
  (wgpy.handover; on by default).
- `--registry etcd://HOST:PORT/NETWORK` or WGPY_REGISTRY=URL follow a peer
  registry in etcd (wgpy.registry; docs/registry.md).
- Exits cleanly on SIGINT/SIGTERM, when the TUN interface is deleted and
  when the UAPI socket file is removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable

import trio

from wgpy.control import socket_path
from wgpy.device import Device
from wgpy.handover import ENV as HANDOVER_ENV
from wgpy.tun import valid_interface_name

log = logging.getLogger("wgpy")

READY_FD_ENV = "WGPY_READY_FD"
REGISTRY_ENV = "WGPY_REGISTRY"  # registry (issue 16): --registry, for the detached daemon too
LOG_LEVELS = {
    "verbose": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "error": logging.ERROR,
    "silent": logging.CRITICAL + 1,
}


def configure_logging() -> None:
    """LOG_LEVEL applies to wgpy's own messages; libraries stay at warnings."""
    level = LOG_LEVELS.get(os.environ.get("LOG_LEVEL", "error").lower(), logging.ERROR)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s")
    log.setLevel(level)


async def run_device(iface: str, ready: Callable[[str | None], None]) -> None:
    """Runs the device until a stop condition; `ready(None)` once serving,
    `ready(reason)` if setup failed."""
    from wgpy.uapi.server import serve_uapi, wait_socket_removed

    path = socket_path(iface)
    async with contextlib.AsyncExitStack() as stack:
        try:
            registry = os.environ.get(REGISTRY_ENV) or None  # registry (issue 16)
            device = await stack.enter_async_context(Device(iface, registry=registry))
        except Exception as e:  # any setup failure is reported in one line
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            ready(f"cannot create interface {iface}: {reason}")
            return
        # serve_uapi removes the socket if it is still its own: another
        # daemon's socket at the same path must survive this one failing.
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(serve_uapi, device, path)
            except OSError as e:
                ready(f"cannot serve {path}: {e.strerror or e}")
                nursery.cancel_scope.cancel()
                return
            ready(None)

            async def stop_when(what: str, waiter: Callable[[], Awaitable[object]]) -> None:
                await waiter()
                log.info("%s: %s, shutting down", iface, what)
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_when, "UAPI socket removed", lambda: wait_socket_removed(path))
            nursery.start_soon(stop_when, "TUN interface gone", device.tun_gone.wait)
            nursery.start_soon(stop_when, "signal received", _wait_for_signal)


async def _wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


def run_foreground(iface: str) -> int:
    """Runs in this process; reports readiness on WGPY_READY_FD if set."""
    ready_fd = os.environ.pop(READY_FD_ENV, None)
    failure: list[str] = []

    def ready(reason: str | None) -> None:
        if reason is not None:
            failure.append(reason)
            print(f"wgpy: {reason}", file=sys.stderr)
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(int(ready_fd), (reason or "ok").encode() + b"\n")
                os.close(int(ready_fd))

    trio.run(run_device, iface, ready)
    return 1 if failure else 0


def launch_background(iface: str) -> int:
    """Starts the daemon detached and waits until it serves or fails."""
    read_end, write_end = os.pipe()
    env = dict(os.environ, WG_PROCESS_FOREGROUND="1", **{READY_FD_ENV: str(write_end)})
    with open(os.devnull, "rb") as devnull_in, open(os.devnull, "wb") as devnull_out:
        subprocess.Popen(
            [sys.executable, "-m", "wgpy", iface],
            env=env,
            pass_fds=(write_end,),
            stdin=devnull_in,
            stdout=devnull_out,
            stderr=devnull_out,
            start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as r:
        answer = r.readline().decode().strip()
    if answer == "ok":
        return 0
    print(f"wgpy: {answer or 'the daemon exited during setup'}", file=sys.stderr)
    return 1


def _registry_error(url: str) -> str | None:  # registry (issue 16)
    from wgpy.registry.config import RegistryConfigError, parse_registry_url

    try:
        parse_registry_url(url)
    except RegistryConfigError as e:
        return str(e)
    return None


def main(args: list[str]) -> int:
    foreground = os.environ.get("WG_PROCESS_FOREGROUND") == "1"
    names = []
    arguments = iter(args)
    for a in arguments:
        if a == "--registry" or a.startswith("--registry="):  # registry (issue 16)
            url = a.partition("=")[2] or next(arguments, "")
            if (error := _registry_error(url)) is not None:
                print(f"wgpy: --registry: {error}", file=sys.stderr)
                return 1
            os.environ[REGISTRY_ENV] = url
        elif a in ("-f", "--foreground"):
            foreground = True
        elif a == "--no-handover":
            # Through the environment, so the detached daemon sees it too.
            os.environ[HANDOVER_ENV] = "0"
        elif a.startswith("-"):
            print(f"wgpy: unknown option {a}", file=sys.stderr)
            return 1
        else:
            names.append(a)
    if len(names) != 1:
        print(
            "Usage: wgpy [-f/--foreground] [--no-handover] [--registry URL] INTERFACE-NAME",
            file=sys.stderr,
        )
        return 1
    iface = names[0]
    if not valid_interface_name(iface):
        print(f"wgpy: invalid interface name {iface!r}", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("wgpy: creating an interface needs root (CAP_NET_ADMIN)", file=sys.stderr)
        return 1
    configure_logging()
    return run_foreground(iface) if foreground else launch_background(iface)

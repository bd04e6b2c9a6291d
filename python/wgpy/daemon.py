"""`wgpy IFACE` (`wgpy daemon IFACE`): the userspace WireGuard daemon, as
`wireguard-go IFACE` behaves.

- Creates the TUN interface and the UAPI socket, then detaches into the
  background; the launching process exits 0 only once the socket accepts
  connections (wg-quick runs `wg setconf` right after it returns), 1 if
  setup failed, with the reason on stderr.
- `-f`/`--foreground` or WG_PROCESS_FOREGROUND=1 keep it in the foreground.
- Needs CAP_NET_ADMIN, not root (wgpy.privileges). With `--user NAME`, or
  when started without root, it keeps only the capabilities it needs once
  the UAPI listener, the metrics listener, the TUN interface and the UDP
  sockets are open, before any data-plane thread starts.
- The UAPI socket's directory must be a real directory owned by root (or
  the daemon's user) that only its owner can write (wgpy.uapi.server).
- Logs and readiness: wgpy.service (LOG_LEVEL, `--log-file`, syslog when
  detached, sd_notify READY=1 under systemd).
- `--metrics HOST:PORT` serves Prometheus metrics (wgpy.metrics), read
  from the same UAPI reply `wg` gets.
- `--no-handover` or WGPY_HANDOVER=0 turn off following underlay changes.
- `--registry etcd://HOST:PORT/NETWORK` or WGPY_REGISTRY=URL follow a peer
  registry in etcd (wgpy.registry; docs/registry.md); a bad URL is a setup
  error.
- Exits cleanly on SIGINT/SIGTERM, when the TUN interface is deleted and
  when the UAPI socket file is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import trio

from wgpy import privileges, service
from wgpy.control import DeviceState, parse_get, socket_path
from wgpy.device import Device
from wgpy.tun import valid_interface_name

log = logging.getLogger("wgpy")

READY_FD_ENV = "WGPY_READY_FD"
REGISTRY_ENV = "WGPY_REGISTRY"


class SetupError(Exception):
    """The daemon cannot start; the message is the one line to print."""


@dataclass(frozen=True)
class Options:
    """The daemon's command line (wgpy.cli defines it)."""

    interface: str
    foreground: bool = False
    no_handover: bool = False
    user: str | None = None
    listen_port: int | None = None
    metrics: tuple[str, int] | None = None
    log_file: str | None = None
    registry: str | None = None

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> Options:
        return cls(
            interface=ns.interface,
            foreground=ns.foreground,
            no_handover=ns.no_handover,
            user=ns.user,
            listen_port=ns.listen_port,
            metrics=ns.metrics,
            log_file=ns.log_file,
            registry=ns.registry or os.environ.get(REGISTRY_ENV) or None,
        )

    def argv(self) -> list[str]:
        """The same options for the detached process (always foreground there)."""
        args = ["daemon", "--foreground"]
        if self.no_handover:
            args.append("--no-handover")
        if self.user is not None:
            args += ["--user", self.user]
        if self.listen_port is not None:
            args += ["--listen-port", str(self.listen_port)]
        if self.metrics is not None:
            host, port = self.metrics
            args += ["--metrics", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        if self.log_file is not None:
            args += ["--log-file", os.path.abspath(self.log_file)]
        if self.registry is not None:
            args += ["--registry", self.registry]
        return [*args, self.interface]


# --- privileges ------------------------------------------------------------------


def _check_privileges(options: Options) -> None:
    """Raises SetupError unless this process can do what the options ask."""
    caps = privileges.current()
    if not caps.has(privileges.CAP_NET_ADMIN):
        raise SetupError(
            "creating an interface needs CAP_NET_ADMIN: run as root, or give the user that "
            "capability (systemd: AmbientCapabilities=CAP_NET_ADMIN)"
        )
    if options.user is None:
        return
    try:
        privileges.user_ids(options.user)
    except KeyError:
        raise SetupError(f"--user: no such user {options.user!r}") from None
    if os.geteuid() != 0:
        raise SetupError("--user needs root (to switch to another user)")


def _check_registry(options: Options) -> None:
    """Raises SetupError for a registry URL that cannot be used."""
    if options.registry is None:
        return
    from wgpy.registry.config import RegistryConfigError, parse_registry_url

    try:
        parse_registry_url(options.registry)
    except RegistryConfigError as e:
        raise SetupError(f"--registry: {e}") from None


def _drops(options: Options) -> bool:
    """Whether the daemon reduces its privileges once set up: asked to run
    as a user, or started without root (then root's full set is not there
    to keep anyway, and the rest is not needed)."""
    return options.user is not None or os.geteuid() != 0


def _drop_privileges(options: Options) -> None:
    try:
        privileges.drop(privileges.needed(options.listen_port), options.user)
    except (OSError, KeyError) as e:
        raise SetupError(f"cannot drop privileges: {e}") from None


# --- running ---------------------------------------------------------------------


@contextlib.contextmanager
def _listeners(options: Options) -> Iterator[tuple[socket.socket, socket.socket | None]]:
    """The UAPI listener and, if asked for, the metrics listener."""
    from wgpy.uapi.server import open_uapi_socket, remove_socket

    path = socket_path(options.interface)
    owners = [privileges.user_ids(options.user)[0]] if options.user else []
    try:
        uapi = open_uapi_socket(path, owners=owners)
    except OSError as e:
        raise SetupError(f"cannot serve {path}: {e.strerror or e}") from None
    identity = os.lstat(path)
    try:
        metrics = _metrics_listener(options.metrics) if options.metrics else None
        try:
            yield uapi, metrics
        finally:
            if metrics is not None:
                metrics.close()
    finally:
        uapi.close()
        # serve_uapi removes it (and says if it cannot); this is for a failed setup.
        remove_socket(path, (identity.st_dev, identity.st_ino), warn=False)


def _metrics_listener(address: tuple[str, int]) -> socket.socket:
    from wgpy.metrics import open_listener

    try:
        return open_listener(*address)
    except OSError as e:
        host, port = address
        raise SetupError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None


async def run_device(options: Options, ready: Callable[[str | None], None]) -> None:
    """Runs the device until a stop condition; `ready(None)` once serving,
    `ready(reason)` if setup failed."""
    try:
        with _listeners(options) as (uapi, metrics):
            await _serve(options, uapi, metrics, ready)
    except SetupError as e:
        ready(str(e))


async def _serve(
    options: Options,
    uapi: socket.socket,
    metrics: socket.socket | None,
    ready: Callable[[str | None], None],
) -> None:
    from wgpy.uapi.server import serve_uapi

    iface = options.interface
    hook = (lambda: _drop_privileges(options)) if _drops(options) else None
    device = Device(
        iface,
        listen_port=options.listen_port or 0,
        handover=False if options.no_handover else None,
        before_start=hook,
        registry=options.registry,
    )
    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(device)
        except SetupError:
            raise
        except Exception as e:  # any setup failure is reported in one line
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise SetupError(f"cannot create interface {iface}: {reason}") from None
        async with trio.open_nursery() as nursery:
            serve = functools.partial(serve_uapi, listener=uapi)
            await nursery.start(serve, device, socket_path(iface))
            if metrics is not None:
                await nursery.start(_serve_metrics, device, metrics)
            ready(None)
            _stop_on_events(nursery, device, iface)


async def _serve_metrics(
    device: Device,
    listener: socket.socket,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    from wgpy.metrics import serve_metrics
    from wgpy.uapi.protocol import format_get

    async def snapshot() -> list[DeviceState]:
        async with device.config_lock:  # never half a set, as for a UAPI get
            reply = format_get(device)
        return [parse_get(device.name, reply.decode())]

    await serve_metrics(listener, snapshot, task_status=task_status)


def _stop_on_events(nursery: trio.Nursery, device: Device, iface: str) -> None:
    from wgpy.uapi.server import wait_socket_removed

    async def stop_when(what: str, waiter: Callable[[], Awaitable[object]]) -> None:
        await waiter()
        log.info("%s: %s, shutting down", iface, what)
        nursery.cancel_scope.cancel()

    path = socket_path(iface)
    nursery.start_soon(stop_when, "UAPI socket removed", lambda: wait_socket_removed(path))
    nursery.start_soon(stop_when, "TUN interface gone", device.tun_gone.wait)
    nursery.start_soon(stop_when, "signal received", _wait_for_signal)


async def _wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


class LaunchPipe:
    """The pipe to the process that started this one detached (WGPY_READY_FD):
    warning lines, then "ok" or the reason setup failed."""

    def __init__(self) -> None:
        fd = os.environ.pop(READY_FD_ENV, None)
        self._fd = int(fd) if fd is not None and fd.isdigit() else None

    @property
    def detached(self) -> bool:
        return self._fd is not None

    def _send(self, line: str) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._fd, line.encode() + b"\n")

    def warn(self, text: str) -> None:
        self._send(f"warning: {text}")

    def done(self, reason: str | None) -> None:
        self._send(reason or "ok")
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def run_foreground(options: Options, launcher: LaunchPipe) -> int:
    """Runs in this process; reports readiness to the launcher and to
    systemd (NOTIFY_SOCKET)."""
    notifier = service.Notifier()
    failure: list[str] = []

    def ready(reason: str | None) -> None:
        if reason is not None:
            failure.append(reason)
            log.error("%s", reason)
            print(f"wgpy: {reason}", file=sys.stderr)
        else:
            log.info("%s: serving %s", options.interface, socket_path(options.interface))
            notifier.notify(f"READY=1\nSTATUS=serving {options.interface}\nMAINPID={os.getpid()}")
        launcher.done(reason)

    try:
        trio.run(run_device, options, ready)
    finally:
        notifier.notify("STOPPING=1")
        notifier.close()
    return 1 if failure else 0


def launch_background(options: Options) -> int:
    """Starts the daemon detached and waits until it serves or fails."""
    read_end, write_end = os.pipe()
    env = dict(os.environ, WG_PROCESS_FOREGROUND="1", **{READY_FD_ENV: str(write_end)})
    with open(os.devnull, "rb") as devnull_in, open(os.devnull, "wb") as devnull_out:
        subprocess.Popen(
            [sys.executable, "-m", "wgpy", *options.argv()],
            env=env,
            pass_fds=(write_end,),
            stdin=devnull_in,
            stdout=devnull_out,
            stderr=devnull_out,
            start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as r:
        for raw in r:
            answer = raw.decode().strip()
            if answer.startswith("warning: "):
                print(f"wgpy: {answer}", file=sys.stderr)
                continue
            if answer == "ok":
                return 0
            break
        else:
            answer = ""
    print(f"wgpy: {answer or 'the daemon exited during setup'}", file=sys.stderr)
    return 1


def _start_logging(options: Options, launcher: LaunchPipe) -> None:
    try:
        warning = service.configure_logging(detached=launcher.detached, log_file=options.log_file)
    except OSError as e:
        where = options.log_file or service.syslog_address()
        raise SetupError(f"cannot log to {where}: {e.strerror or e}") from None
    # Said only to whoever asked for a log: otherwise every `wgpy up` on a
    # machine without syslog would warn.
    if warning is not None and "LOG_LEVEL" in os.environ:
        launcher.warn(warning)


def main(options: Options) -> int:
    iface = options.interface
    launcher = LaunchPipe()
    try:
        if not valid_interface_name(iface):
            raise SetupError(f"invalid interface name {iface!r}")
        _check_privileges(options)
        _check_registry(options)
        if not (options.foreground or os.environ.get("WG_PROCESS_FOREGROUND") == "1"):
            return launch_background(options)
        _start_logging(options, launcher)
    except SetupError as e:
        print(f"wgpy: {e}", file=sys.stderr)
        launcher.done(str(e))
        return 1
    return run_foreground(options, launcher)

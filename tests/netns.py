"""Network-namespace helpers for tests that talk to real interfaces and peers.

Everything is made through a `NetnsLab`, which records it and undoes it in
`NetnsLab.cleanup()`: background processes are killed (their whole process
group), UDP/raw sockets opened inside namespaces are closed, the UAPI sockets
`/var/run/wireguard/<iface>.sock` of interface names the lab handed out are
removed, links are deleted and the namespaces are deleted, with their
/etc/netns/<name> files. Names carry a random
suffix, because `/var/run/wireguard` and `/run/netns` are shared by every
namespace and every concurrent test run; namespace names also carry the
creating pid (`wgpyt-<pid>-<hex>`), so `remove_stale_namespaces()` can delete
those of a test process that was SIGKILLed. Background processes get
PR_SET_PDEATHSIG=SIGTERM, so they die with the test process even then.

Sockets are opened inside a namespace by entering it with setns(2) on the
calling thread only and coming back at once; a socket keeps the namespace it
was created in, so the test can then use it from anywhere.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from interop.proc import run_command

NAME_PREFIX = "wgpyt-"
NETNS_DIR = Path("/run/netns")
# Files `ip netns exec` bind-mounts over /etc for processes it starts in NAME.
NETNS_ETC_DIR = Path("/etc/netns")
WG_RUN_DIR = Path("/var/run/wireguard")
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 16  # including the terminating NUL
COMMAND_TIMEOUT = 10.0


class CommandError(RuntimeError):
    """A command run by the helpers exited non-zero; the message has its output."""


def random_name(prefix: str, hex_digits: int = 8) -> str:
    return prefix + secrets.token_hex((hex_digits + 1) // 2)[:hex_digits]


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = COMMAND_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion with a timeout, capturing text output."""
    return run_command(argv, check=check, timeout=timeout, env=env, error=CommandError)


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll `predicate` until it is true; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def _namespace_prefix() -> str:
    """Namespace names are `wgpyt-<creator pid>-<random>`, so stale ones can be found."""
    return f"{NAME_PREFIX}{os.getpid()}-"


def remove_stale_namespaces() -> list[str]:
    """Delete `wgpyt-<pid>-*` namespaces whose creating process no longer exists.

    They are left only by a test process killed outright (SIGKILL), which
    skips every cleanup. Namespaces of live test runs are never touched.
    """
    removed = []
    for path in NETNS_DIR.glob(f"{NAME_PREFIX}*-*"):
        pid_text = path.name.removeprefix(NAME_PREFIX).partition("-")[0]
        if not pid_text.isdigit() or Path(f"/proc/{pid_text}").exists():
            continue
        if run(["ip", "netns", "delete", path.name], check=False).returncode == 0:
            removed.append(path.name)
            shutil.rmtree(NETNS_ETC_DIR / path.name, ignore_errors=True)
    return removed


# --- entering a namespace from this thread ----------------------------------


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    os_setns: Callable[[int, int], None] | None = getattr(os, "setns", None)  # Python >= 3.12
    if os_setns is not None:
        os_setns(fd, CLONE_NEWNET)
        return
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


@contextlib.contextmanager
def entered_netns(name: str) -> Iterator[None]:
    """Move the calling thread into network namespace `name` for the block.

    setns(2) with CLONE_NEWNET changes only the calling thread, so other threads
    are unaffected. The original namespace is restored from an fd opened first;
    if that fails the thread is stranded, so the error propagates.
    """
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(original)


PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """In a child before exec: get SIGTERM if this test process dies, even by
    SIGKILL, so a killed test run does not leave daemons behind. The setting
    survives exec (of non-setuid programs) and `ip netns exec`."""
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# --- skipping when the machine cannot do this -------------------------------


@functools.cache
def root_netns_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None if they can (probed once)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (run the tests as root)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    probe = random_name(_namespace_prefix())
    try:
        added = run(["ip", "netns", "add", probe], check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` failed: {exc}"
    if added.returncode != 0:
        return f"`ip netns add` failed: {added.stderr.strip()}"
    try:
        with entered_netns(probe):
            pass
    except OSError as exc:
        return f"cannot enter a network namespace with setns(2): {exc}"
    finally:
        run(["ip", "netns", "delete", probe], check=False)
    return None


def cannot_run(reason: str) -> NoReturn:
    """Skips the calling test; in CI (CI set, as `.ci/run` does) fails it
    instead: scripts/test installs everything the tests need, so a missing
    tool there is a broken setup, not a reason to test less."""
    if os.environ.get("CI"):
        pytest.fail(f"cannot run in CI: {reason}")
    pytest.skip(reason)


def require_root_netns() -> None:
    """Skip the calling test unless it may create and enter network namespaces."""
    reason = root_netns_unavailable_reason()
    if reason is not None:
        cannot_run(reason)


def require_programs(*names: str) -> None:
    """Skip the calling test unless every named program is on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        cannot_run(f"needs {', '.join(missing)} on PATH")


def require_tun() -> None:
    """Skip the calling test unless /dev/net/tun can be opened."""
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError as exc:
        cannot_run(f"/dev/net/tun is not usable: {exc}")


# --- processes, namespaces, links -------------------------------------------


@dataclass
class BackgroundProcess:
    """A process started by the lab in its own process group, logging to a file."""

    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM the process group, then SIGKILL it if the leader outlives `grace`.

        The group is signalled only while its leader is unreaped, so the group
        id cannot have been reused by an unrelated process.
        """
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=grace)


@dataclass(frozen=True)
class Namespace:
    """A network namespace owned by a `NetnsLab`."""

    name: str
    lab: NetnsLab = field(repr=False, compare=False)

    def argv(self, command: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def run(
        self,
        command: Sequence[str],
        *,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside this namespace (`ip netns exec`)."""
        return run(self.argv(command), check=check, timeout=timeout, env=env)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `ip -n <ns> ARGS...`."""
        return run(["ip", "-n", self.name, *args], check=check)

    def spawn(
        self, command: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> BackgroundProcess:
        """Start a tracked background process inside this namespace."""
        return self.lab.spawn(self.argv(command), env=env)

    def entered(self) -> contextlib.AbstractContextManager[None]:
        """Run the block with the calling thread inside this namespace."""
        return entered_netns(self.name)

    def socket(
        self, family: socket.AddressFamily, kind: socket.SocketKind, proto: int = 0
    ) -> socket.socket:
        """A socket created inside this namespace; the lab closes it at cleanup."""
        with self.entered():
            sock = socket.socket(family, kind, proto)
        self.lab.track_socket(sock)
        return sock

    def etc_file(self, name: str, text: str) -> Path:
        """Writes /etc/netns/<ns>/<name>: what processes started in this
        namespace from now on see as /etc/<name> (`ip netns exec` bind-mounts
        it). Rewritten later in place, the change is seen at once. Removed at
        cleanup."""
        path = NETNS_ETC_DIR / self.name / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:  # in place: the same inode
            f.write(text)
        return path

    def udp_listening(self, port: int) -> bool:
        """Whether some UDP socket in this namespace is bound to `port`."""
        out = self.run(["ss", "-H", "-u", "-l", "-n", f"sport = :{port}"], check=False)
        return out.returncode == 0 and out.stdout.strip() != ""

    def link_exists(self, ifname: str) -> bool:
        return self.ip("link", "show", "dev", ifname, check=False).returncode == 0

    def link_is_up(self, ifname: str) -> bool:
        out = self.ip("-o", "link", "show", "dev", ifname, check=False)
        flags = out.stdout.partition("<")[2].partition(">")[0].split(",")
        return out.returncode == 0 and "UP" in flags and "LOWER_UP" in flags


@dataclass(frozen=True)
class VethPair:
    """Two veth ends, `a_ifname` in `a` and `b_ifname` in `b`, both up."""

    a: Namespace
    a_ifname: str
    b: Namespace
    b_ifname: str


class NetnsLab:
    """Creates namespaces, links and processes, and removes them all in cleanup()."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.namespaces: list[Namespace] = []
        self.links: list[tuple[str, str]] = []  # (namespace, ifname)
        self.processes: list[BackgroundProcess] = []
        self.sockets: list[socket.socket] = []
        self.uapi_sockets: list[Path] = []
        self.cleaned = False
        _live_labs.add(self)

    # creation ---------------------------------------------------------------

    def namespace(self) -> Namespace:
        """A fresh, uniquely named namespace with `lo` up."""
        ns = Namespace(random_name(_namespace_prefix()), self)
        self.namespaces.append(ns)  # before creating, so a half-made one is removed too
        run(["ip", "netns", "add", ns.name])
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(
        self,
        a: Namespace,
        b: Namespace,
        a_addresses: Sequence[str] = (),
        b_addresses: Sequence[str] = (),
        *,
        timeout: float = 5.0,
    ) -> VethPair:
        """A veth pair created directly inside `a` and `b`, addressed and up.

        Addresses are CIDR strings; IPv6 ones are added with `nodad`, so they are
        usable at once.
        """
        pair = VethPair(a, random_name("va"), b, random_name("vb"))
        self.links += [(a.name, pair.a_ifname), (b.name, pair.b_ifname)]
        peer = ["peer", "name", pair.b_ifname, "netns", b.name]
        run(["ip", "link", "add", "name", pair.a_ifname, "netns", a.name, "type", "veth", *peer])
        for ns, ifname, addresses in (
            (a, pair.a_ifname, a_addresses),
            (b, pair.b_ifname, b_addresses),
        ):
            for address in addresses:
                add_address(ns, ifname, address)
            ns.ip("link", "set", ifname, "up")
        for ns, ifname in ((a, pair.a_ifname), (b, pair.b_ifname)):
            wait_until(
                lambda ns=ns, ifname=ifname: ns.link_is_up(ifname),
                timeout=timeout,
                what=f"{ifname} in {ns.name} to be up",
            )
        return pair

    def interface_name(self, namespace: Namespace, prefix: str = "wgg") -> str:
        """A unique interface name for a program to create in `namespace`.

        Its link and its UAPI socket `/var/run/wireguard/<name>.sock` are
        removed at cleanup. A name whose socket already exists is never handed
        out, so cleanup only ever removes sockets of this lab.
        """
        while True:
            name = random_name(prefix)
            sock = WG_RUN_DIR / f"{name}.sock"
            if len(name) < IFNAMSIZ and not sock.exists():
                break
        self.links.append((namespace.name, name))
        self.uapi_sockets.append(sock)
        return name

    def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> BackgroundProcess:
        """Start a tracked process in a new session, output going to a log file."""
        log_path = self.work_dir / f"proc-{len(self.processes)}-{Path(argv[0]).name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else {**os.environ, **env},
                preexec_fn=_terminate_with_parent,
            )
        process = BackgroundProcess(list(argv), popen, log_path)
        self.processes.append(process)
        return process

    def track_socket(self, sock: socket.socket) -> None:
        self.sockets.append(sock)

    # removal ----------------------------------------------------------------

    def cleanup(self) -> None:
        """Undo everything; keep going past failures, then raise if any occurred.

        Order: kill processes (so nothing recreates sockets or links), close
        sockets, remove UAPI sockets, delete links, delete namespaces, and
        finally check that no namespace of this lab is left.
        """
        if self.cleaned:
            return
        self.cleaned = True
        problems: list[str] = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except Exception as exc:
                problems.append(f"stopping {process.argv}: {exc!r}")
        for sock in self.sockets:
            sock.close()
        for path in self.uapi_sockets:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                problems.append(f"removing {path}: {exc!r}")
        for ns_name, ifname in reversed(self.links):
            if (NETNS_DIR / ns_name).exists():
                run(["ip", "-n", ns_name, "link", "delete", "dev", ifname], check=False)
        for ns in reversed(self.namespaces):
            if not (NETNS_DIR / ns.name).exists():
                continue
            try:
                run(["ip", "netns", "delete", ns.name])
            except (CommandError, subprocess.TimeoutExpired) as exc:
                problems.append(f"deleting namespace {ns.name}: {exc}")
        for ns in self.namespaces:
            shutil.rmtree(NETNS_ETC_DIR / ns.name, ignore_errors=True)
        left = [ns.name for ns in self.namespaces if (NETNS_DIR / ns.name).exists()]
        if left:
            problems.append(f"namespaces still present: {left}")
        if problems:
            raise RuntimeError("netns cleanup incomplete:\n" + "\n".join(problems))

    def logs(self) -> str:
        """Every tracked process's command line and output, for failure reports."""
        return "\n".join(
            f"--- {' '.join(p.argv)} (pid {p.pid}, exit {p.popen.poll()}) ---\n{p.log()}"
            for p in self.processes
        )


def add_address(ns: Namespace, ifname: str, cidr: str) -> None:
    """Add an address to a link; IPv6 ones skip duplicate address detection."""
    if ":" in cidr:
        ns.ip("-6", "address", "add", cidr, "dev", ifname, "nodad")
    else:
        ns.ip("address", "add", cidr, "dev", ifname)


# A last resort for an interpreter that exits without running fixture teardown
# (for instance on an exception escaping pytest itself).
_live_labs: weakref.WeakSet[NetnsLab] = weakref.WeakSet()


@atexit.register
def _cleanup_live_labs() -> None:
    for lab in list(_live_labs):
        with contextlib.suppress(Exception):
            lab.cleanup()

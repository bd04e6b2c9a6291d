"""A Linux kernel WireGuard peer for interop tests: a QEMU guest, or the host kernel.

The running kernel of a development machine may have no wireguard module, so
the peer is a guest: a kernel image that has the module (Debian's
linux-image-*-amd64 packages; on a CI runner, the runner's own kernel) booted
by QEMU with a small initramfs made here and cached: static busybox as the
root, the wireguard module and its dependencies (decompressed, loaded with
insmod in modules.dep order), and iproute2's `ip`, `wg` and `iperf3` with
their shared libraries and the dynamic loader.

    namespace (the test's)                      QEMU guest
    tap <- 10.79.0.1/24, fd00:79::1/64 -------- eth0 10.79.0.2/24, fd00:79::2/64
    (the test puts wgpy here)                   wg0, wg1, ... made on demand

The guest's first serial port is its console, written to `console.log`; the
second is a command channel on a UNIX socket. Its init runs a loop that reads
`<id> <base64 of a shell script>` lines, runs each script in a subshell and
answers `BEGIN <id>`, the output in base64, `END <id> <exit status>`; so the
test runs commands in the guest while it runs and gets their output and status
exactly. Scripts run one at a time: start long jobs with `&`, output redirected.

Inside the guest, `ip`, `wg` and `iperf3` are shell functions calling the
copied binaries by path: Debian's static busybox would otherwise run its own
cut-down `ip` applet even with iproute2's binary on PATH.

QEMU uses `-accel kvm` only if a probe boot works: a nested /dev/kvm may not
boot this kernel (QEMU stops with "KVM internal error"/"emulation failure",
which the harness spots in QEMU's output within a second or two). The result is
remembered per host kernel, QEMU version and guest kernel, so a machine pays
for a failed probe once; then `-accel tcg`, where the guest is ready in about
5 s. WGPY_INTEROP_ACCEL=kvm|tcg skips the probe. The initramfs and the probe
results are cached in /var/cache/wgpy-interop (WGPY_INTEROP_CACHE); the
initramfs's name carries a hash of HARNESS_VERSION, the kernel release, the
init script and the size and mtime of every file copied in.

Where the host kernel has the module (GitHub's Ubuntu runners), the same
interface is backed by a namespace of the host instead (`HostKernelPeer`): a
veth pair replaces the tap, and commands run under `ip netns exec`.
`start_kernel_peer()` picks the backend: WGPY_INTEROP_BACKEND=qemu|host, or
automatically (host when `ip link add ... type wireguard` works, else qemu).

Everything a peer creates (QEMU, the tap or the namespace, its files) is
removed by `close()`, and only that. Failures raise `InteropError` subclasses
whose messages say why: `BackendUnavailable` (no qemu, no kernel image with
the module, no module...), `GuestNotReady` (with the console log's tail),
`GuestCommandError`.

Shell use, from the repository root (as root):

    python3 -m interop.kernel_guest --build        build (or find) the initramfs, print its path
    python3 -m interop.kernel_guest --check        boot, show versions, measure boot time, stop
    python3 -m interop.kernel_guest --shell        boot and read commands to run in the guest
    python3 -m interop.kernel_guest --shell -c 'wg show; ip -br addr'
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import functools
import gzip
import hashlib
import io
import lzma
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .proc import run_command

# Bump when the initramfs layout or the guest's init changes: it is part of the cache key.
HARNESS_VERSION = "4"

CACHE_DIR = Path(os.environ.get("WGPY_INTEROP_CACHE", "/var/cache/wgpy-interop"))
READY_TIMEOUT = float(os.environ.get("WGPY_INTEROP_READY_TIMEOUT", "90"))
KVM_PROBE_TIMEOUT = 20.0
COMMAND_TIMEOUT = 60.0
READY_MARK = "WGPY-GUEST-READY"
NAMESPACE_PREFIX = "wgpyt-"  # tests/netns.py removes stale `wgpyt-<pid>-*` namespaces

# Modules the guest loads (with their dependencies), unless built in.
GUEST_MODULES = ("virtio_pci", "virtio_net", "wireguard")
# Programs copied into the guest, with their libraries.
GUEST_PROGRAMS = ("ip", "wg", "iperf3")


@dataclass(frozen=True)
class Underlay:
    """The link between the test's namespace and the kernel peer (tap or veth)."""

    host_v4: str = "10.79.0.1"
    peer_v4: str = "10.79.0.2"
    v4_prefix: int = 24
    host_v6: str = "fd00:79::1"
    peer_v6: str = "fd00:79::2"
    v6_prefix: int = 64


# --- errors and results ------------------------------------------------------


class InteropError(RuntimeError):
    """The kernel peer could not be provided or driven; the message says why."""


class BackendUnavailable(InteropError):
    """This machine lacks what the backend needs (qemu, a kernel image, the module...)."""


class GuestNotReady(InteropError):
    """The guest did not start its command loop in time (the message has the console tail)."""


class GuestCommandError(InteropError):
    """A command in the kernel peer failed or timed out."""


@dataclass(frozen=True)
class CommandResult:
    command: str
    status: int
    output: str

    @property
    def ok(self) -> bool:
        return self.status == 0


# --- small host helpers ------------------------------------------------------


def _run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return run_command(argv, check=check, timeout=timeout, error=InteropError)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL it when the harness process dies, even by SIGKILL."""
    _libc().prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _random_suffix(n: int = 6) -> str:
    return secrets.token_hex(n // 2 + 1)[:n]


def new_namespace_name() -> str:
    return f"{NAMESPACE_PREFIX}{os.getpid()}-k{_random_suffix()}"


# --- the kernel image --------------------------------------------------------


@dataclass(frozen=True)
class KernelImage:
    release: str
    vmlinuz: Path
    modules_dir: Path

    def module_path(self, name: str) -> Path | None:
        """The file of module `name` (`-` and `_` are equivalent), None if built in."""
        wanted = name.replace("-", "_")
        for rel in self._builtin():
            if _module_name(rel) == wanted:
                return None
        for rel in self._deps():
            if _module_name(rel) == wanted:
                return self.modules_dir / rel
        raise BackendUnavailable(
            f"kernel {self.release} has no module {name} "
            f"(not in {self.modules_dir}/modules.dep or modules.builtin)"
        )

    def closure(self, names: Sequence[str]) -> list[Path]:
        """Module files for `names` and everything they depend on, dependencies first."""
        deps = self._deps()
        order: list[str] = []

        def visit(rel: str) -> None:
            if rel in order:
                return
            for dep in deps.get(rel, []):
                visit(dep)
            order.append(rel)

        for name in names:
            path = self.module_path(name)
            if path is not None:
                visit(str(path.relative_to(self.modules_dir)))
        return [self.modules_dir / rel for rel in order]

    def missing(self, names: Sequence[str]) -> list[str]:
        """The modules of `names` this kernel has neither as a file nor built in."""
        gone = []
        for name in names:
            try:
                self.module_path(name)
            except BackendUnavailable:
                gone.append(name)
        return gone

    def has_wireguard(self) -> bool:
        return not self.missing(["wireguard"])

    def _deps(self) -> dict[str, list[str]]:
        return _read_modules_dep(self.modules_dir / "modules.dep")

    def _builtin(self) -> list[str]:
        path = self.modules_dir / "modules.builtin"
        return path.read_text().split() if path.exists() else []


def _module_name(rel: str) -> str:
    base = rel.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


@functools.cache
def _read_modules_dep(path: Path) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(":")
        deps[name.strip()] = rest.split()
    return deps


def _version_key(release: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.+~-]", release)]


def find_kernel_image(release: str | None = None) -> KernelImage:
    """A kernel image with the wireguard module (a file or built in) and its modules.

    WGPY_INTEROP_KERNEL names the release to use; otherwise the running
    kernel's release if it qualifies, else the newest that does.
    """
    release = release or os.environ.get("WGPY_INTEROP_KERNEL") or None
    modules_root = Path("/lib/modules")
    releases = (
        [release]
        if release
        else sorted(
            (p.name for p in modules_root.glob("*") if (p / "modules.dep").exists()),
            key=_version_key,
            reverse=True,
        )
    )
    running = os.uname().release
    if not release and running in releases:
        releases.remove(running)
        releases.insert(0, running)
    looked: list[str] = []
    for rel in releases:
        image = KernelImage(rel, Path(f"/boot/vmlinuz-{rel}"), modules_root / rel)
        if not (image.modules_dir / "modules.dep").exists():
            looked.append(f"{rel}: no {image.modules_dir}/modules.dep")
        elif not image.has_wireguard():
            looked.append(f"{rel}: no wireguard module")
        elif missing := image.missing(GUEST_MODULES):
            looked.append(f"{rel}: no {', '.join(missing)} (module or built in)")
        elif not image.vmlinuz.exists():
            looked.append(f"{rel}: no {image.vmlinuz}")
        elif not os.access(image.vmlinuz, os.R_OK):
            looked.append(f"{rel}: {image.vmlinuz} is not readable (run as root)")
        else:
            return image
    raise BackendUnavailable(
        "no kernel image with the wireguard module to boot in QEMU "
        "(scripts/install-system-deps installs one); looked at: "
        + ("; ".join(looked) or f"nothing under {modules_root}")
    )


# --- the initramfs -----------------------------------------------------------

INIT_SCRIPT = r"""#!/bin/busybox sh
# wgpy interop guest: load the modules, then run commands from the second serial port.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /var/run /sbin /usr/bin /usr/sbin
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
@FUNCTIONS@
while read -r m; do
    insmod "$m" || echo "wgpy-guest: insmod $m failed"
done < /etc/wgpy-modules
ip link set lo up
echo "wgpy-guest: $(uname -r), modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
stty -F /dev/ttyS1 raw -echo -ixon 2>/dev/null
exec 3<>/dev/ttyS1
echo "@READY@ $(cut -d' ' -f1 /proc/uptime)"
echo "@READY@ $(cut -d' ' -f1 /proc/uptime)" >&3
while :; do
    if ! read -r id script <&3; then sleep 0.1; continue; fi
    case "$id" in wgpy-[0-9a-f]*) ;; *) continue ;; esac
    printf '%s' "$script" | base64 -d > /tmp/.cmd.$id 2>/dev/null
    ( . /tmp/.cmd.$id ) </dev/null >/tmp/.out.$id 2>&1
    status=$?
    { echo "BEGIN $id"; base64 /tmp/.out.$id; echo "END $id $status"; } >&3
    rm -f /tmp/.cmd.$id /tmp/.out.$id
done
"""


def _cpio_newc(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """An uncompressed cpio archive ("newc") of (path, mode, data) entries, which the
    kernel unpacks as an initramfs. Directories must come before their contents."""
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(encoded)
        pad()
        out.write(data)
        pad()
    return out.getvalue()


def _program(name: str) -> Path:
    for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        raise BackendUnavailable(f"`{name}` is not installed; the guest needs it")
    return Path(found)


def _busybox() -> Path:
    """A statically linked busybox: the guest has no libraries of its own for it."""
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if candidate.is_file() and not _shared_libraries(candidate):
            return candidate
    raise BackendUnavailable("no static busybox (install the busybox-static package)")


def _shared_libraries(program: Path) -> list[Path]:
    """The libraries `program` loads, and the dynamic loader, from ldd."""
    out = _run(["ldd", str(program)], check=False).stdout
    libs: list[Path] = []
    for line in out.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def _decompress_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        if shutil.which("zstd") is None:
            raise BackendUnavailable(f"{path} is zstd-compressed and `zstd` is not installed")
        return subprocess.run(
            ["zstd", "-dc", str(path)], capture_output=True, check=True, timeout=60
        ).stdout
    return data


def _initramfs_inputs(kernel: KernelImage) -> tuple[list[Path], list[Path], Path]:
    modules = kernel.closure(GUEST_MODULES)
    programs = [_program(name) for name in GUEST_PROGRAMS]
    return modules, programs, _busybox()


def _cache_key(kernel: KernelImage, files: Sequence[Path]) -> str:
    h = hashlib.sha256(f"{HARNESS_VERSION}\n{kernel.release}\n{INIT_SCRIPT}\n".encode())
    for path in files:
        st = path.stat()
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def build_initramfs(kernel: KernelImage, cache_dir: Path = CACHE_DIR) -> Path:
    """The guest's initramfs (gzip'd cpio), built once and cached.

    The cache key covers the harness version, the kernel release, the init
    script and the size and mtime of every file copied in, so an upgraded
    package or a changed harness builds a new one. Concurrent builders each
    write a temporary file and rename it into place.
    """
    modules, programs, busybox = _initramfs_inputs(kernel)
    libraries: list[Path] = []
    for program in programs:
        for lib in _shared_libraries(program):
            if lib not in libraries:
                libraries.append(lib)
    key = _cache_key(kernel, [*modules, *programs, *libraries, busybox])
    target = cache_dir / f"initramfs-{kernel.release}-{key}.cpio.gz"
    if target.exists():
        return target

    files: dict[str, tuple[int, bytes]] = {}
    dirs: set[str] = set()

    def add(path: str, mode: int, data: bytes) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
        files[path.strip("/")] = (mode, data)

    functions = []
    add("bin/busybox", 0o100755, busybox.read_bytes())
    for program in programs:
        add(str(program), 0o100755, program.read_bytes())
        # Debian's busybox runs its own applet for a bare `ip` even when iproute2's
        # binary is on PATH; a shell function (looked up before applets) avoids that.
        functions.append(f'{program.name}() {{ {program} "$@"; }}')
    for lib in libraries:
        add(str(lib), 0o100755, lib.resolve().read_bytes())
    module_list = []
    for module in modules:
        name = "/lib/modules/" + module.name.split(".ko", 1)[0] + ".ko"
        add(name, 0o100644, _decompress_module(module))
        module_list.append(name)
    add("etc/wgpy-modules", 0o100644, "".join(f"{m}\n" for m in module_list).encode())
    init = INIT_SCRIPT.replace("@FUNCTIONS@", "\n".join(functions)).replace("@READY@", READY_MARK)
    add("init", 0o100755, init.encode())
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "etc"):
        dirs.add(d)

    entries = [(d, 0o040755, b"") for d in sorted(dirs, key=lambda d: (d.count("/"), d))]
    entries += [(path, mode, data) for path, (mode, data) in sorted(files.items())]
    archive = gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".initramfs-")
    with os.fdopen(fd, "wb") as f:
        f.write(archive)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    for old in cache_dir.glob(f"initramfs-{kernel.release}-*.cpio.gz"):
        if old != target:
            with contextlib.suppress(OSError):
                old.unlink()
    return target


# --- the common interface ----------------------------------------------------


class KernelPeer:
    """A Linux kernel WireGuard peer reachable from the test's namespace.

    `run()` executes a shell script where the peer lives (the guest, or its
    namespace) and returns its status and output; the helpers below are built
    on it so they work the same on both backends.
    """

    backend = "abstract"

    def __init__(self, namespace: str, underlay: Underlay, host_ifname: str) -> None:
        self.namespace = namespace  # the test's namespace, holding the host side of the link
        self.underlay = underlay
        self.host_ifname = host_ifname  # the tap or veth in `namespace`
        self.peer_ifname = "eth0"  # the peer's NIC
        self.tmp = "/tmp"  # a writable directory on the peer's side
        self._wg_ifaces: list[str] = []

    # To implement.
    def _execute(self, script: str, timeout: float) -> CommandResult:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def console_log(self) -> str:
        return ""

    def describe(self) -> str:
        return self.backend

    def _address_host_side(self) -> None:
        """Addresses the host side of the link and brings it up."""
        u, ns, dev = self.underlay, self.namespace, self.host_ifname
        _run(["ip", "-n", ns, "address", "add", f"{u.host_v4}/{u.v4_prefix}", "dev", dev])
        v6 = ["address", "add", f"{u.host_v6}/{u.v6_prefix}", "dev", dev, "nodad"]
        _run(["ip", "-n", ns, "-6", *v6])
        _run(["ip", "-n", ns, "link", "set", dev, "up"])

    def _address_peer_side(self) -> None:
        """Addresses the peer's eth0 and brings it up."""
        u, dev = self.underlay, self.peer_ifname
        self.check(
            f"ip link set {dev} up"
            f" && ip address add {u.peer_v4}/{u.v4_prefix} dev {dev}"
            f" && ip -6 address add {u.peer_v6}/{u.v6_prefix} dev {dev} nodad"
        )

    # Commands.
    def run(self, script: str, *, timeout: float = COMMAND_TIMEOUT) -> CommandResult:
        """Runs `script` with sh on the peer's side; output is stdout and stderr together."""
        return self._execute(script, timeout)

    def check(self, script: str, *, timeout: float = COMMAND_TIMEOUT) -> str:
        """Like run(), but raises GuestCommandError unless the status is 0."""
        result = self.run(script, timeout=timeout)
        if not result.ok:
            raise GuestCommandError(
                f"{self.backend} peer: `{script}` exited {result.status}:\n{result.output}"
            )
        return result.output

    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Writes `data` (which may be a key: it never appears in an error) to `path`."""
        b64 = base64.b64encode(data).decode()
        try:
            self.check(
                f"umask 077; printf '%s' {b64} | base64 -d > {shlex.quote(path)}"
                f" && chmod {mode:o} {shlex.quote(path)}"
            )
        except GuestCommandError:
            raise GuestCommandError(f"{self.backend} peer: writing {path} failed") from None

    def read_file(self, path: str) -> str:
        return self.check(f"cat {shlex.quote(path)}")

    # WireGuard.
    def ensure_wg(self, iface: str) -> None:
        if iface not in self._wg_ifaces:
            self.check(
                f"ip link show {iface} >/dev/null 2>&1 || ip link add {iface} type wireguard"
            )
            self._wg_ifaces.append(iface)

    def set_wg(
        self, iface: str, config: str, addresses: Sequence[str], *, mtu: int | None = None
    ) -> None:
        """Configures `iface` from a wg(8) config (`wg setconf`: the peers are replaced),
        sets exactly `addresses` (CIDR strings) on it and brings it up. The config file
        holds a private key: it is written with mode 600 and removed after use."""
        self.ensure_wg(iface)
        path = f"{self.tmp}/.{iface}.conf"
        self.write_file(path, config.encode())
        steps = [f"wg setconf {iface} {path}", f"rm -f {path}", f"ip address flush dev {iface}"]
        for address in addresses:
            family = "-6" if ":" in address else "-4"
            nodad = " nodad" if ":" in address else ""
            steps.append(f"ip {family} address add {address} dev {iface}{nodad}")
        if mtu is not None:
            steps.append(f"ip link set {iface} mtu {mtu}")
        steps.append(f"ip link set {iface} up")
        try:
            self.check(" && ".join(steps))
        finally:
            self.run(f"rm -f {path}")

    def wg_dump(self, iface: str) -> str:
        """`wg show IFACE dump` (the first line is the interface, then one per peer)."""
        return self.check(f"wg show {iface} dump")

    def link_stats(self, iface: str) -> dict[str, int]:
        """/sys/class/net/IFACE/statistics, as the kernel counts it."""
        out = self.check(
            f"cd /sys/class/net/{iface}/statistics && for f in *; do echo $f $(cat $f); done"
        )
        return {k: int(v) for k, v in (line.split() for line in out.splitlines() if line.strip())}

    def unix_time(self) -> float:
        """The peer's wall clock (what `wg show` timestamps are in)."""
        return float(self.check("date +%s").strip())

    def __enter__(self) -> KernelPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- QEMU --------------------------------------------------------------------


def _kvm_usable() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return False
    return True


class _CommandChannel:
    """The host end of the guest's command port (a UNIX socket QEMU listens on)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.lock = threading.Lock()

    def connect(self, deadline: float, alive: Callable[[], bool]) -> None:
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
            except OSError:
                sock.close()
                if not alive() or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
                continue
            self.sock = sock
            return

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def read_line(self, deadline: float) -> str | None:
        """The next line, or None at the deadline; raises EOFError if QEMU closed it."""
        assert self.sock is not None
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(min(remaining, 0.5))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise EOFError("the guest's command channel closed (QEMU exited?)")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace").rstrip("\r")

    def call(self, script: str, timeout: float) -> tuple[int, str] | None:
        """Runs `script` in the guest: (status, output), or None on timeout."""
        assert self.sock is not None
        with self.lock:
            ident = f"wgpy-{secrets.token_hex(6)}"
            payload = base64.b64encode(script.encode()).decode()
            self.sock.sendall(f"{ident} {payload}\n".encode())
            deadline = time.monotonic() + timeout
            collecting = False
            chunks: list[str] = []
            while True:
                line = self.read_line(deadline)
                if line is None:
                    return None
                if line == f"BEGIN {ident}":
                    collecting, chunks = True, []
                elif line.startswith(f"END {ident} "):
                    output = base64.b64decode("".join(chunks)).decode(errors="replace")
                    return int(line.split()[2]), output
                elif collecting:
                    chunks.append(line.strip())


class QemuGuest(KernelPeer):
    """A kernel booted in QEMU with a tap NIC in the test's namespace."""

    backend = "qemu"

    def __init__(
        self,
        namespace: str,
        work_dir: Path,
        *,
        underlay: Underlay | None = None,
        accel: str | None = None,
        memory_mb: int = 512,
        cpus: int = 1,
        ready_timeout: float = READY_TIMEOUT,
        kernel: KernelImage | None = None,
        cache_dir: Path = CACHE_DIR,
    ) -> None:
        super().__init__(namespace, underlay or Underlay(), f"wgtap{_random_suffix()}")
        self.work_dir = Path(tempfile.mkdtemp(prefix="qemu-guest-", dir=work_dir))
        self.console_path = self.work_dir / "console.log"
        # UNIX socket paths are limited to 108 bytes: keep this one short.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="wgpyq-"))
        self.channel = _CommandChannel(self._sock_dir / "cmd.sock")
        self.process: subprocess.Popen[bytes] | None = None
        self.tap_created = False
        self.accel = ""
        self.boot_seconds = 0.0
        self.closed = False
        try:
            self._start(accel, memory_mb, cpus, ready_timeout, kernel, cache_dir)
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        return f"qemu ({self.accel}, kernel {self.kernel.release})"

    def console_log(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except OSError:
            return ""

    def _start(
        self,
        accel: str | None,
        memory_mb: int,
        cpus: int,
        ready_timeout: float,
        kernel: KernelImage | None,
        cache_dir: Path,
    ) -> None:
        self.qemu = shutil.which("qemu-system-x86_64")
        if self.qemu is None:
            raise BackendUnavailable(
                "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)"
            )
        self.kernel = kernel or find_kernel_image()
        self.initramfs = build_initramfs(self.kernel, cache_dir)
        self._make_tap()
        accel = accel or os.environ.get("WGPY_INTEROP_ACCEL", "auto")
        if accel == "auto":
            accel = self._probe_accel(cache_dir, memory_mb, cpus)
            if accel == "kvm":
                return  # the probe boot is kept
        self._boot(accel, memory_mb, cpus, ready_timeout)

    def _make_tap(self) -> None:
        _run(["ip", "-n", self.namespace, "tuntap", "add", "dev", self.host_ifname, "mode", "tap"])
        self.tap_created = True
        self._address_host_side()

    def _probe_accel(self, cache_dir: Path, memory_mb: int, cpus: int) -> str:
        """KVM if it boots this kernel here, else TCG; a failed probe is remembered
        (per host kernel, QEMU version and guest kernel) so it is paid once."""
        if not _kvm_usable():
            return "tcg"
        assert self.qemu is not None
        version = _run([self.qemu, "--version"], check=False).stdout.splitlines()[:1]
        key = hashlib.sha256(
            f"{os.uname().release}\n{version}\n{self.kernel.release}".encode()
        ).hexdigest()[:16]
        record = cache_dir / f"accel-{key}"
        with contextlib.suppress(OSError):
            if record.read_text().startswith("tcg"):
                return "tcg"
        try:
            self._boot("kvm", memory_mb, cpus, KVM_PROBE_TIMEOUT)
        except InteropError as exc:
            self._stop_qemu()
            self.channel.close()
            with contextlib.suppress(OSError):
                cache_dir.mkdir(parents=True, exist_ok=True)
                record.write_text(f"tcg: KVM failed to boot {self.kernel.release}: {exc}\n"[:4000])
            return "tcg"
        with contextlib.suppress(OSError):
            record.write_text("kvm\n")
        return "kvm"

    def _boot(self, accel: str, memory_mb: int, cpus: int, ready_timeout: float) -> None:
        assert self.qemu is not None
        self.accel = accel
        sock = self.channel.path
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        append = " ".join(
            [
                "console=ttyS0",
                "rdinit=/init",
                "panic=-1",
                "oops=panic",
                "loglevel=4",
                "mitigations=off",
                "random.trust_cpu=on",
                "net.ifnames=0",
            ]
        )
        argv = [
            "ip", "netns", "exec", self.namespace,
            self.qemu,
            "-name", "wgpy-interop",
            "-accel", accel,
            "-machine", "pc",
            "-cpu", "host" if accel == "kvm" else "max",
            "-smp", str(cpus),
            "-m", str(memory_mb),
            "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
            "-no-reboot",
            "-kernel", str(self.kernel.vmlinuz),
            "-initrd", str(self.initramfs),
            "-append", append,
            "-serial", f"file:{self.console_path}",
            "-serial", f"unix:{sock},server=on,wait=off",
            "-netdev", f"tap,id=n0,ifname={self.host_ifname},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
            "-monitor", "none",
        ]  # fmt: skip
        log = open(self.work_dir / f"qemu-{accel}.log", "wb")
        with log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        started = time.monotonic()
        deadline = started + ready_timeout
        try:
            self.channel.connect(deadline, self._alive)
            while True:
                line = self.channel.read_line(min(deadline, time.monotonic() + 0.5))
                if line is not None and line.startswith(READY_MARK):
                    break
                if not self._alive():
                    raise GuestNotReady(self._failure(f"QEMU ({accel}) exited during boot"))
                if accel == "kvm" and self._kvm_failed():
                    raise GuestNotReady(self._failure("KVM cannot run this guest"))
                if time.monotonic() > deadline:
                    raise GuestNotReady(
                        self._failure(f"guest not ready within {ready_timeout:.0f} s ({accel})")
                    )
        except (OSError, EOFError) as exc:
            raise GuestNotReady(self._failure(f"QEMU ({accel}): {exc}")) from exc
        self.boot_seconds = time.monotonic() - started
        self._address_peer_side()

    def _kvm_failed(self) -> bool:
        """A nested /dev/kvm may stop the guest (QEMU then stays up, paused)."""
        try:
            text = (self.work_dir / "qemu-kvm.log").read_text(errors="replace")
        except OSError:
            return False
        return any(s in text for s in ("KVM internal error", "emulation failure", "failed to set"))

    def _alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _failure(self, what: str) -> str:
        qemu_log = ""
        with contextlib.suppress(OSError):
            qemu_log = (self.work_dir / f"qemu-{self.accel}.log").read_text(errors="replace")
        return (
            f"{what}; kernel {self.kernel.vmlinuz}, initramfs {self.initramfs}\n"
            f"--- QEMU output ---\n{_tail(qemu_log, 20)}\n"
            f"--- console log tail ({self.console_path}) ---\n{_tail(self.console_log())}"
        )

    def _execute(self, script: str, timeout: float) -> CommandResult:
        if not self._alive():
            raise GuestCommandError(self._failure(f"QEMU is not running (for `{script}`)"))
        try:
            answer = self.channel.call(script, timeout)
        except (OSError, EOFError) as exc:
            raise GuestCommandError(self._failure(f"command channel failed: {exc}")) from exc
        if answer is None:
            raise GuestCommandError(
                self._failure(f"`{script}` did not finish within {timeout:.0f} s")
            )
        return CommandResult(script, *answer)

    def _stop_qemu(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # nothing to save in the guest
        process.wait(timeout=10)

    def close(self) -> None:
        """Stops QEMU and deletes the tap and the socket directory: only what this made."""
        if self.closed:
            return
        self.closed = True
        self.channel.close()
        self._stop_qemu()
        if self.tap_created:
            _run(["ip", "-n", self.namespace, "link", "delete", self.host_ifname], check=False)
        shutil.rmtree(self._sock_dir, ignore_errors=True)


# --- the host kernel ---------------------------------------------------------


def host_kernel_wireguard_reason() -> str | None:
    """Why the host kernel cannot make a wireguard link (None if it can), probed in a
    throwaway namespace so nothing outside it is touched."""
    if os.geteuid() != 0:
        return "needs root"
    ns = new_namespace_name()
    try:
        _run(["ip", "netns", "add", ns])
    except InteropError as exc:
        return str(exc)
    try:
        out = _run(["ip", "-n", ns, "link", "add", "wgprobe", "type", "wireguard"], check=False)
        return None if out.returncode == 0 else f"host kernel: {out.stderr.strip()}"
    finally:
        _run(["ip", "netns", "delete", ns], check=False)


class HostKernelPeer(KernelPeer):
    """The host kernel's wireguard in a namespace of its own, joined to the test's
    namespace by a veth pair (the peer's end is named eth0, as in the guest)."""

    backend = "host"

    def __init__(self, namespace: str, work_dir: Path, *, underlay: Underlay | None = None) -> None:
        super().__init__(namespace, underlay or Underlay(), f"wgvk{_random_suffix()}")
        self.peer_namespace = new_namespace_name()
        self.root = Path(tempfile.mkdtemp(prefix="host-peer-", dir=work_dir))
        self.tmp = str(self.root)
        self.ns_created = False
        self.closed = False
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        return f"host kernel {os.uname().release} (namespace {self.peer_namespace})"

    def _start(self) -> None:
        reason = host_kernel_wireguard_reason()
        if reason is not None:
            raise BackendUnavailable(f"no wireguard in the host kernel: {reason}")
        ns, pns = self.namespace, self.peer_namespace
        _run(["ip", "netns", "add", pns])
        self.ns_created = True
        _run(["ip", "-n", pns, "link", "set", "lo", "up"])
        peer = ["peer", "name", self.peer_ifname, "netns", pns]
        _run(["ip", "-n", ns, "link", "add", self.host_ifname, "type", "veth", *peer])
        self._address_host_side()
        self._address_peer_side()

    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """The peer's files are the host's: written directly, never on a command line."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, mode)

    def _execute(self, script: str, timeout: float) -> CommandResult:
        argv = ["ip", "netns", "exec", self.peer_namespace, "sh", "-c", script]
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=self.root,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise GuestCommandError(f"`{script}` did not finish within {timeout:.0f} s") from exc
        return CommandResult(script, result.returncode, result.stdout.decode(errors="replace"))

    def close(self) -> None:
        """Kills the processes left in the peer's namespace, deletes it (and with it
        the wireguard links and the veth pair) and its directory."""
        if self.closed:
            return
        self.closed = True
        if self.ns_created:
            pids = _run(["ip", "netns", "pids", self.peer_namespace], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run(["ip", "netns", "delete", self.peer_namespace], check=False)
            _run(["ip", "-n", self.namespace, "link", "delete", self.host_ifname], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


# --- choosing ----------------------------------------------------------------


def start_kernel_peer(
    namespace: str,
    work_dir: Path,
    *,
    backend: str | None = None,
    underlay: Underlay | None = None,
    **qemu_options: object,
) -> KernelPeer:
    """A kernel WireGuard peer linked to `namespace` (which must exist).

    backend: "qemu", "host", or "auto" (the default, or WGPY_INTEROP_BACKEND):
    the host kernel when it can create a wireguard link, else a QEMU guest.
    """
    backend = backend or os.environ.get("WGPY_INTEROP_BACKEND", "auto")
    if backend == "auto":
        backend = "host" if host_kernel_wireguard_reason() is None else "qemu"
    if backend == "host":
        return HostKernelPeer(namespace, work_dir, underlay=underlay)
    if backend == "qemu":
        return QemuGuest(namespace, work_dir, underlay=underlay, **qemu_options)  # type: ignore[arg-type]
    raise InteropError(f"unknown backend {backend!r} (expected qemu, host or auto)")


# --- command line ------------------------------------------------------------


@contextlib.contextmanager
def _scratch_namespace() -> Iterator[str]:
    name = new_namespace_name()
    _run(["ip", "netns", "add", name])
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        yield name
    finally:
        _run(["ip", "netns", "delete", name], check=False)


def _print_result(result: CommandResult) -> None:
    sys.stdout.write(result.output)
    if result.output and not result.output.endswith("\n"):
        sys.stdout.write("\n")
    if not result.ok:
        print(f"[exit {result.status}]")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m interop.kernel_guest",
        description="Boot a kernel WireGuard peer for interop tests (see the module docstring).",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--build", action="store_true", help="build the initramfs, print its path")
    mode.add_argument("--check", action="store_true", help="boot, print versions, stop")
    mode.add_argument("--shell", action="store_true", help="boot and run commands in the peer")
    parser.add_argument("-c", dest="command", help="with --shell: run this and stop")
    parser.add_argument("--backend", choices=["auto", "qemu", "host"], default=None)
    parser.add_argument("--accel", choices=["auto", "kvm", "tcg"], default=None)
    parser.add_argument("--keep-dir", type=Path, default=None, help="keep the logs here")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        return _main(args, stack)


def _main(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    try:
        if args.build:
            print(build_initramfs(find_kernel_image()))
            return 0
        if os.geteuid() != 0:
            print("needs root (network namespaces, tap devices)", file=sys.stderr)
            return 2
        work = args.keep_dir or Path(tempfile.mkdtemp(prefix="wgpy-interop-"))
        work.mkdir(parents=True, exist_ok=True)
        if args.keep_dir is None:  # logs go with the run unless asked for
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        with _scratch_namespace() as ns:
            options: dict[str, object] = {}
            if args.accel:
                options["accel"] = args.accel
            started = time.monotonic()
            with start_kernel_peer(ns, work, backend=args.backend, **options) as peer:
                print(
                    f"kernel peer ready in {time.monotonic() - started:.1f} s: "
                    f"{peer.describe()}; host side {peer.host_ifname} in namespace {ns} "
                    f"({peer.underlay.host_v4}), peer {peer.underlay.peer_v4}"
                    + (f"; logs in {work}" if args.keep_dir else ""),
                    file=sys.stderr,
                )
                if args.check:
                    peer.ensure_wg("wg0")
                    _print_result(peer.run("uname -r; wg --version; ip -br link; ip -br addr"))
                    ping = peer.run(f"ping -c 2 -W 2 {peer.underlay.host_v4}")
                    _print_result(ping)
                    return 0 if ping.ok else 1
                if args.command is not None:
                    result = peer.run(args.command)
                    _print_result(result)
                    return result.status
                print("commands run in the peer; end with EOF (Ctrl-D)", file=sys.stderr)
                while True:
                    try:
                        line = input("kernel-peer$ ")
                    except EOFError:
                        print(file=sys.stderr)
                        return 0
                    if line.strip():
                        _print_result(peer.run(line))
    except InteropError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

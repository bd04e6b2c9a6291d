"""The cross-platform userspace API (UAPI): how `wg` configures and reads wgpy.

Spec: wireguard.com/xplatform; reference: wireguard-go device/uapi.go and
ipc/uapi_*.go; PROTOCOL-NOTES.md section 3. The rules, as implemented here:

- The socket is an AF_UNIX stream socket, /var/run/wireguard/IFACE.sock,
  made under umask 077 (srwx------) in a 0755 directory. If the path exists,
  it is probed: a refused connection means a stale socket, which is
  replaced; an accepted one means the interface is in use. The socket is
  removed when serving stops; the daemon exits when it is deleted
  (`wait_socket_removed`: inotify, else polling).
- A connection carries any number of requests: `get=1\\n\\n`, or `set=1\\n`,
  `key=value\\n` lines and a blank line. Any other first line closes it.
- A set is answered `errno=N\\n\\n` with N = 0 or a negative errno:
  -EPROTO for a line without '=', -EINVAL for an unknown key or a bad
  value, -EADDRINUSE when the fwmark or listen port cannot be applied,
  -EIO (then the connection closes) for a line over 4 KiB or a request over
  64 MiB.
- A get is answered with key=value lines in wireguard-go's order, then
  `errno=0\\n\\n`. wg reads a get's errno as unsigned, so the one get error
  (`get=1` followed by anything but the blank line) is `errno=22`, positive;
  the connection then closes.
- A set is all or nothing. It is read to its blank line (one cut short by
  EOF is not applied: -EPROTO) and validated whole before anything changes.
  Applying starts with the only steps that can still fail, the fwmark and the
  listen port (undone together); the rest cannot fail once validated.
- Meaning of a set, as in wireguard-go: device keys come before the first
  `public_key`; an all-zero private or preshared key removes the key; a peer
  block with the device's own public key is ignored; `update_only=true`
  does not create an absent peer; `remove=true` removes the peer (the block's
  other lines are then ignored); `replace_allowed_ips=true` and the
  `allowed_ip` lines apply in order, `allowed_ip=-addr/cidr` (newer wg)
  removing one prefix; numbers are plain decimal (ASCII digits only).
- Differences from wireguard-go (0.0.20220316, checked in tests/test_uapi.py):
  a failing set changes nothing (wireguard-go keeps the lines before the bad
  one, and a failed rebind leaves it with no port); an unterminated set is
  not applied; the get error's errno is positive and closes the connection;
  lines before `remove=true`/`update_only=true` in a block have no effect;
  endpoints with an IPv6 zone (`[fe80::1%eth0]:51820`) are refused
  (EINVAL), as the data plane takes no scope ids; a get lists peers in the
  order they were added (wireguard-go: random) and allowed IPs sorted,
  IPv4 first (wireguard-go: as added).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import ipaddress
import logging
import math
import os
import socket
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import trio

from wgpy._core import PresharedKey, PrivateKey, PublicKey

if TYPE_CHECKING:
    from wgpy.device import Device
    from wgpy.handover import HandoverReport
    from wgpy.peer import Peer

log = logging.getLogger("wgpy.uapi")

MAX_LINE = 4096  # the longest valid line is under 100 bytes
MAX_REQUEST = 64 << 20  # 130,000 allowed IPs are about 3.5 MB
RECEIVE_SIZE = 64 << 10
# Bigger set requests are parsed in a worker thread, so the device's own
# tasks (handshakes, timers) keep running meanwhile.
THREAD_PARSE_SIZE = 1 << 20
STALE_PROBE_TIMEOUT = 1.0
POLL_INTERVAL = 1.0
LISTEN_BACKLOG = 128

_ZERO_KEY = bytes(32)
_ZERO_KEY_HEX = "0" * 64
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class UAPIError(Exception):
    """A request failed; `code` is the positive errno the reply reports."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _invalid(message: str) -> UAPIError:
    return UAPIError(errno.EINVAL, message)


# --- the parsed form of a set request ------------------------------------------

AllowedIPAction = Literal["add", "remove", "replace"]
# ("add" | "remove", canonical address text, prefix length), or ("replace", "", 0).
AllowedIPOp = tuple[AllowedIPAction, str, int]


@dataclass
class PeerChange:
    """One `public_key=` block of a set request, validated."""

    public_key: PublicKey
    remove: bool = False
    update_only: bool = False
    preshared_key: PresharedKey | None = None
    clear_preshared_key: bool = False
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int | None = None
    allowed_ips: list[AllowedIPOp] = field(default_factory=list)


@dataclass
class SetRequest:
    """A whole set request, validated; None/False fields leave things as they are."""

    private_key: PrivateKey | None = None
    remove_private_key: bool = False
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerChange] = field(default_factory=list)


# --- values --------------------------------------------------------------------


def _key_bytes(key: str, value: str) -> bytes:
    # Go's hex decoding accepts either case; wg sends lowercase.
    if len(value) != 64 or not _HEX_DIGITS.issuperset(value):
        raise _invalid(f"{key} must be 64 hex digits")
    return bytes.fromhex(value)


def _decimal(key: str, value: str, maximum: int) -> int:
    """Go's strconv.ParseUint(value, 10, bits): ASCII digits, no sign, space or 0x."""
    if not (value.isascii() and value.isdigit()):
        raise _invalid(f"{key} must be a decimal number, not {value[:40]!r}")
    number = int(value)
    if number > maximum:
        raise _invalid(f"{key} {number} is out of range (0-{maximum})")
    return number


def _true(key: str, value: str) -> None:
    if value != "true":
        raise _invalid(f"{key} must be 'true', not {value[:40]!r}")


def _address(text: str) -> tuple[socket.AddressFamily, str]:
    """The family and canonical text of a literal IP address (no scope ids).

    The canonical text is what the Rust data plane parses, so applying a
    validated request cannot fail on an address.
    """
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        packed = socket.inet_pton(family, text)
    except (OSError, ValueError):  # ValueError: NUL or unencodable characters
        raise _invalid(f"not an IP address: {text[:60]!r}") from None
    return family, socket.inet_ntop(family, packed)


def parse_endpoint(value: str) -> tuple[str, int]:
    """`IPv4:port` or `[IPv6]:port` (netip.ParseAddrPort); wg resolves names itself."""
    host, colon, port_text = value.rpartition(":")
    if not colon:
        raise _invalid(f"endpoint without a port: {value[:60]!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    family, address = _address(host[1:-1] if bracketed else host)
    if bracketed != (family == socket.AF_INET6):
        raise _invalid(f"endpoint {value[:60]!r}: brackets go around IPv6 addresses only")
    return address, _decimal("endpoint port", port_text, 0xFFFF)


def parse_allowed_ip(value: str) -> AllowedIPOp:
    """`addr/cidr` adds a prefix, `-addr/cidr` removes one (netip.ParsePrefix)."""
    remove = value.startswith("-")
    address_text, slash, bits = (value[1:] if remove else value).partition("/")
    if not slash or not (bits.isascii() and bits.isdigit()):
        raise _invalid(f"allowed_ip must be addr/cidr, not {value[:60]!r}")
    family, address = _address(address_text)
    cidr = int(bits)
    if cidr > (32 if family == socket.AF_INET else 128):
        raise _invalid(f"allowed_ip prefix length out of range: {value[:60]!r}")
    return ("remove" if remove else "add", address, cidr)


# --- parsing a set request --------------------------------------------------------


def parse_set(body: bytes | str) -> SetRequest:
    """Validates the lines of a set request (between `set=1` and the blank line).

    Raises UAPIError at the first bad line, as wireguard-go stops there;
    nothing has been applied at that point.
    """
    text = body.decode("latin-1") if isinstance(body, bytes) else body
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the body's final newline
    request = SetRequest()
    peer: PeerChange | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise UAPIError(errno.EPROTO, f"line without '=': {line[:60]!r}")
        if len(line) > MAX_LINE:
            raise UAPIError(errno.EIO, f"line of {len(line)} bytes is too long")
        if key == "allowed_ip" and peer is not None:  # the bulk of a big request
            peer.allowed_ips.append(parse_allowed_ip(value))
        elif key == "public_key":
            peer = PeerChange(PublicKey.from_bytes(_key_bytes(key, value)))
            request.peers.append(peer)
        elif peer is None:
            _device_line(request, key, value)
        else:
            _peer_line(peer, key, value)
    return request


def _device_line(request: SetRequest, key: str, value: str) -> None:
    if key == "private_key":
        raw = _key_bytes(key, value)
        request.remove_private_key = raw == _ZERO_KEY
        request.private_key = None if request.remove_private_key else PrivateKey.from_bytes(raw)
    elif key == "listen_port":
        request.listen_port = _decimal(key, value, 0xFFFF)
    elif key == "fwmark":
        request.fwmark = _decimal(key, value, 0xFFFF_FFFF)
    elif key == "replace_peers":
        _true(key, value)
        request.replace_peers = True
    else:
        raise _invalid(f"invalid device key {key[:40]!r}")


def _peer_line(peer: PeerChange, key: str, value: str) -> None:
    if key == "remove":
        _true(key, value)
        peer.remove = True
    elif key == "update_only":
        _true(key, value)
        peer.update_only = True
    elif key == "preshared_key":
        raw = _key_bytes(key, value)
        peer.clear_preshared_key = raw == _ZERO_KEY
        peer.preshared_key = None if peer.clear_preshared_key else PresharedKey.from_bytes(raw)
    elif key == "endpoint":
        peer.endpoint = parse_endpoint(value)
    elif key == "persistent_keepalive_interval":
        peer.persistent_keepalive = _decimal(key, value, 0xFFFF)
    elif key == "replace_allowed_ips":
        _true(key, value)
        peer.allowed_ips.append(("replace", "", 0))
    elif key == "protocol_version":
        if value != "1":
            raise _invalid(f"unsupported protocol_version {value[:40]!r}")
    else:
        raise _invalid(f"invalid peer key {key[:40]!r}")


# --- applying a set request ---------------------------------------------------------


async def apply_set(device: Device, request: SetRequest) -> None:
    """Applies a validated request. Raises UAPIError(EADDRINUSE), having
    changed nothing, if the fwmark or listen port cannot be applied; every
    later step cannot fail."""
    _apply_socket_settings(device, request)
    if request.replace_peers:
        for peer in device.peers:
            device.remove_peer(peer.public_key)
    if request.private_key is not None or request.remove_private_key:
        device.set_private_key(request.private_key)
    own_key = device.public_key
    unstarted: set[PublicKey] = set()
    for change in request.peers:
        key = change.public_key
        if own_key is not None and key == own_key:
            continue  # wireguard-go's "dummy" peer: never created
        if change.remove:
            if key in unstarted:
                await _let_new_peers_start()
                unstarted.clear()
            device.remove_peer(key)
        elif _has_peer(device, key):
            _update_peer(device, change)
        elif not change.update_only:
            _create_peer(device, change)
            unstarted.add(key)
    if unstarted:
        await _let_new_peers_start()


async def _let_new_peers_start() -> None:
    """Device.add_peer starts the peer's timer task with start_soon; if the
    peer is removed before that task first runs, the task reads a peer the
    data plane no longer has and takes the device down. Every task spawned
    before two schedule points has run to its first await after them (Trio
    runs each batch of runnable tasks in full). Shielded: applying a request
    is never abandoned half-way."""
    for _ in range(2):
        await trio.lowlevel.cancel_shielded_checkpoint()


def _apply_socket_settings(device: Device, request: SetRequest) -> None:
    """The fwmark, then the listen port (binding may fail: EADDRINUSE); a
    failure restores the old fwmark, so nothing has changed."""
    old_fwmark = device.fwmark
    if request.fwmark is not None and request.fwmark != old_fwmark:
        try:
            device.set_fwmark(request.fwmark)
        except OSError as e:
            _restore_fwmark(device, old_fwmark)  # it may have changed some sockets
            raise UAPIError(errno.EADDRINUSE, f"cannot set fwmark: {e}") from None
    if request.listen_port is not None:
        try:
            device.set_listen_port(request.listen_port)
        except OSError as e:
            if device.fwmark != old_fwmark:
                _restore_fwmark(device, old_fwmark)
            message = f"cannot listen on port {request.listen_port}: {e}"
            raise UAPIError(errno.EADDRINUSE, message) from None


def _restore_fwmark(device: Device, fwmark: int) -> None:
    with contextlib.suppress(OSError):
        device.set_fwmark(fwmark)


def _has_peer(device: Device, key: PublicKey) -> bool:
    try:
        device.peer(key)
    except KeyError:
        return False
    return True


def _create_peer(device: Device, change: PeerChange) -> None:
    peer = device.add_peer(
        change.public_key,
        preshared_key=change.preshared_key,
        endpoint=change.endpoint,
        persistent_keepalive=change.persistent_keepalive or 0,
    )
    _apply_allowed_ips(device, peer, change.allowed_ips)


def _update_peer(device: Device, change: PeerChange) -> None:
    if change.clear_preshared_key:
        device.clear_preshared_key(change.public_key)
    peer = device.update_peer(
        change.public_key,
        preshared_key=change.preshared_key,
        endpoint=change.endpoint,
        persistent_keepalive=change.persistent_keepalive,
    )
    _apply_allowed_ips(device, peer, change.allowed_ips)


def _apply_allowed_ips(device: Device, peer: Peer, ops: list[AllowedIPOp]) -> None:
    """In order, since a prefix belongs to one peer at a time: adding one
    takes it from its current owner. Runs of additions go in one call."""
    additions: list[tuple[str, int]] = []
    for action, address, cidr in ops:
        if action == "add":
            additions.append((address, cidr))
            continue
        if additions:
            device.add_allowed_ip_prefixes(peer, additions)
            additions = []
        if action == "replace":
            device.update_peer(peer.public_key, replace_allowed_ips=True)
        else:
            device.remove_allowed_ip(peer, ipaddress.ip_network(f"{address}/{cidr}", strict=False))
    if additions:
        device.add_allowed_ip_prefixes(peer, additions)


# --- get ---------------------------------------------------------------------------


def format_endpoint(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _prefix_order(prefix: tuple[str, int]) -> tuple[int, bytes, int]:
    # The data plane's hash tables have no order; sort IPv4 first, then by
    # address and length, so `wg showconf` prints the same text every time.
    address, cidr = prefix
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return (family == socket.AF_INET6, socket.inet_pton(family, address), cidr)


def _unix_time(seconds: float | None) -> tuple[int, int]:
    if seconds is None:
        return 0, 0
    # Split before scaling: seconds * 1e9 needs more than a double's 53 bits.
    sec = math.floor(seconds)
    return sec, min(round((seconds - sec) * 1e9), 999_999_999)


INVALID_SOURCE_KEY = "wgpy_invalid_source_packets"
# Handover (wgpy.handover), device level: on|off; the Unix time of the last
# underlay change; the recent decisions, oldest first, one per line as
# "<unix time> <kind> <peer public key hex or -> <detail>". Peer level: the
# Unix time of the last re-announcement to the peer.
HANDOVER_KEY = "wgpy_handover"
LAST_UNDERLAY_CHANGE_KEY = "wgpy_last_underlay_change"
HANDOVER_EVENT_KEY = "wgpy_handover_event"
LAST_REANNOUNCE_KEY = "wgpy_last_reannounce"


def _handover_lines(report: HandoverReport | None) -> list[str]:
    """None: nothing to report (a device without the handover feature)."""
    if report is None:
        return []
    lines = [f"{HANDOVER_KEY}={'on' if report.enabled else 'off'}"]
    if report.last_underlay_change is not None:
        lines.append(f"{LAST_UNDERLAY_CHANGE_KEY}={report.last_underlay_change:.3f}")
    for e in report.events:
        peer = bytes(e.peer).hex() if e.peer is not None else "-"
        detail = " ".join(e.detail.split())  # one line
        lines.append(f"{HANDOVER_EVENT_KEY}={e.time:.3f} {e.kind} {peer} {detail}".rstrip())
    return lines


def format_get(device: Device) -> bytes:
    """The full reply to `get=1`, in wireguard-go's order, ending in `errno=0`."""
    lines: list[str] = []
    if device.private_key is not None:
        lines.append("private_key=" + device.private_key.to_bytes().hex())
    if device.listen_port:
        lines.append(f"listen_port={device.listen_port}")
    if device.fwmark:
        lines.append(f"fwmark={device.fwmark}")
    report = device.handover_report()
    lines.extend(_handover_lines(report))
    reannounced = report.last_reannounce if report is not None else {}
    for peer, stats, prefixes in device.uapi_stats():
        psk = peer.preshared_key
        psk_hex = psk.to_bytes().hex() if psk is not None else _ZERO_KEY_HEX
        lines.append("public_key=" + bytes(peer.public_key).hex())
        lines.append("preshared_key=" + psk_hex)
        lines.append("protocol_version=1")
        if stats.endpoint is not None:
            lines.append("endpoint=" + format_endpoint(stats.endpoint))
        sec, nsec = _unix_time(stats.last_handshake)
        lines.append(f"last_handshake_time_sec={sec}")
        lines.append(f"last_handshake_time_nsec={nsec}")
        lines.append(f"tx_bytes={stats.tx_bytes}")
        lines.append(f"rx_bytes={stats.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={stats.persistent_keepalive}")
        # wgpy's own counter (wg ignores keys it does not know): data packets
        # from this peer whose inner source address routes to another peer.
        lines.append(f"{INVALID_SOURCE_KEY}={stats.invalid_source_packets}")
        if peer.public_key in reannounced:
            lines.append(f"{LAST_REANNOUNCE_KEY}={reannounced[peer.public_key]:.3f}")
        prefixes.sort(key=_prefix_order)
        lines.extend([f"allowed_ip={address}/{cidr}" for address, cidr in prefixes])
    lines.append("errno=0")
    return ("\n".join(lines) + "\n\n").encode()


# --- framing: a connection's byte stream -> requests (sans I/O) ----------------------


@dataclass(frozen=True)
class Frame:
    """What the connection must do next.

    kind "get": answer a get; "set": apply `body` (the lines between `set=1`
    and the blank line); "reply-and-close": send `reply`, then close;
    "close": close without a reply.
    """

    kind: Literal["get", "set", "reply-and-close", "close"]
    body: bytes = b""
    reply: bytes = b""


CLOSE = Frame("close")


def errno_reply(code: int) -> bytes:
    return f"errno={code}\n\n".encode()


class RequestReader:
    """Splits the bytes of one connection into requests.

    Feed it what the socket gives (`feed`, `feed_eof`) and call `next_frame`
    until it returns None (needs more bytes). Memory is bounded: a line over
    MAX_LINE or a request over MAX_REQUEST ends the connection.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._state: Literal["op", "get", "set", "done"] = "op"
        self._scanned = 0  # bytes of a set body already searched for the blank line

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def feed_eof(self) -> None:
        self._eof = True

    def next_frame(self) -> Frame | None:
        if self._state == "op":
            return self._op_line()
        if self._state == "get":
            return self._get_terminator()
        if self._state == "set":
            return self._set_body()
        return CLOSE

    def _finish(self, frame: Frame) -> Frame:
        self._state = "done"
        return frame

    def _op_line(self) -> Frame | None:
        end = self._buffer.find(b"\n", 0, MAX_LINE + 1)
        if end < 0:
            if self._eof or len(self._buffer) > MAX_LINE:
                return self._finish(CLOSE)
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        if line == b"get=1":
            self._state = "get"
            return self._get_terminator()
        if line == b"set=1":
            self._state, self._scanned = "set", 0
            return self._set_body()
        log.debug("UAPI: invalid operation %r", line[:60])
        return self._finish(CLOSE)

    def _get_terminator(self) -> Frame | None:
        if not self._buffer:
            return self._finish(CLOSE) if self._eof else None
        if self._buffer[0] != ord("\n"):
            # Positive: wg parses a get's errno as unsigned.
            return self._finish(Frame("reply-and-close", reply=errno_reply(errno.EINVAL)))
        del self._buffer[:1]
        self._state = "op"
        return Frame("get")

    def _set_body(self) -> Frame | None:
        buffer = self._buffer
        if buffer[:1] == b"\n":  # no lines at all
            del buffer[:1]
            self._state = "op"
            return Frame("set")
        end = buffer.find(b"\n\n", max(self._scanned - 1, 0))
        if end >= 0:
            body = bytes(buffer[: end + 1])
            del buffer[: end + 2]
            self._state = "op"
            return Frame("set", body=body)
        self._scanned = len(buffer)
        tail = len(buffer) - (buffer.rfind(b"\n") + 1)  # the line still being received
        if tail > MAX_LINE or len(buffer) > MAX_REQUEST:
            log.warning("UAPI: set request too large, closing the connection")
            return self._finish(Frame("reply-and-close", reply=errno_reply(-errno.EIO)))
        if self._eof:
            # Not applied: a truncated request could drop half a peer's allowed IPs.
            return self._finish(Frame("reply-and-close", reply=errno_reply(-errno.EPROTO)))
        return None


# --- the server ------------------------------------------------------------------


async def handle_set(device: Device, body: bytes, lock: trio.Lock) -> int:
    """Parses and applies one set request; returns the errno for the reply."""
    try:
        if len(body) > THREAD_PARSE_SIZE:
            request = await trio.to_thread.run_sync(parse_set, body)
        else:
            request = parse_set(body)
        async with lock:
            await apply_set(device, request)
    except UAPIError as e:
        log.warning("UAPI: set failed: %s", e)
        return -e.code
    except Exception:
        log.exception("UAPI: set failed unexpectedly")
        return -errno.EIO
    return 0


async def handle_get(device: Device, lock: trio.Lock) -> bytes | None:
    """The reply to a get, or None if the device cannot answer (closes the connection)."""
    try:
        async with lock:  # never between the steps of a set
            return format_get(device)
    except Exception:
        log.exception("UAPI: get failed unexpectedly")
        return None


async def serve_connection(device: Device, stream: trio.abc.Stream, lock: trio.Lock) -> None:
    """Answers requests on one connection until the client or a framing error ends it."""
    reader = RequestReader()
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                frame = reader.next_frame()
                if frame is None:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if data:
                        reader.feed(data)
                    else:
                        reader.feed_eof()
                    continue
                if frame.kind == "close":
                    return
                if frame.kind == "reply-and-close":
                    await stream.send_all(frame.reply)
                    return
                if frame.kind == "get":
                    reply = await handle_get(device, lock)
                    if reply is None:
                        return
                else:
                    reply = errno_reply(await handle_set(device, frame.body, lock))
                await stream.send_all(reply)


async def _serve_connection_logged(
    device: Device, stream: trio.abc.Stream, lock: trio.Lock
) -> None:
    # One connection's failure must never stop the server.
    try:
        await serve_connection(device, stream, lock)
    except Exception:
        log.exception("UAPI: connection failed")


def _file_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _bind_private(sock: socket.socket, path: Path) -> None:
    """Binds with umask 077, as wireguard-go: the socket is srwx------ from the start."""
    old_umask = os.umask(0o077)
    try:
        sock.bind(os.fspath(path))
    finally:
        os.umask(old_umask)


def _remove_stale_socket(path: Path) -> None:
    """Unlinks `path` if it is a socket nobody serves; raises if it is in use."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(STALE_PROBE_TIMEOUT)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("UAPI: removing stale socket %s", path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        except (TimeoutError, BlockingIOError):
            pass  # a full backlog: someone serves it
    raise OSError(errno.EADDRINUSE, f"interface in use: {path} is served by another process")


def open_uapi_socket(path: str | os.PathLike[str]) -> socket.socket:
    """Creates the listening UAPI socket at `path` (directory 0755, socket
    srwx------), replacing a stale one. Raises OSError (EADDRINUSE, "interface
    in use") if a live process serves that path.

    Separate from serve_uapi so a launcher can open it before daemonizing.
    """
    path = Path(path)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            _bind_private(sock, path)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            _remove_stale_socket(path)
            _bind_private(sock, path)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_uapi(
    device: Device,
    path: str | os.PathLike[str],
    *,
    listener: socket.socket | None = None,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serves the UAPI for `device` at `path` until cancelled.

    `task_status.started(path)` is called once the socket accepts
    connections. `listener` is an already listening socket for `path` (from
    `open_uapi_socket`, e.g. opened before daemonizing). On exit the socket
    file is removed, unless it has been replaced by another one meanwhile.
    """
    path = Path(path)
    sock = listener if listener is not None else open_uapi_socket(path)
    identity = _file_identity(path)
    listening = trio.socket.from_stdlib_socket(sock)
    lock = trio.Lock()
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            while True:
                try:
                    conn, _ = await listening.accept()
                except OSError as e:
                    if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        raise
                    # Out of descriptors or memory: let current connections finish.
                    log.warning("UAPI: accept failed: %s", e)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(_serve_connection_logged, device, trio.SocketStream(conn), lock)
    finally:
        listening.close()
        if identity is not None and _file_identity(path) == identity:
            with contextlib.suppress(OSError):
                os.unlink(path)


# --- exiting when the socket file is deleted -----------------------------------------

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
IN_ATTRIB = 0x0000_0004  # unlink changes the link count: the first sign
IN_DELETE_SELF = 0x0000_0400
IN_MOVE_SELF = 0x0000_0800
IN_IGNORED = 0x0000_8000  # the watch is gone
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


def _inotify_watch(path: bytes) -> int | None:
    """A non-blocking inotify fd watching `path`, or None if inotify is unavailable."""
    libc = _libc()
    if libc is None:
        return None
    fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, path, IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF) < 0:
        os.close(fd)
        return None
    return fd


def _drain_events(fd: int) -> int:
    """Reads every queued inotify event; returns their masks OR-ed together."""
    masks = 0
    while True:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return masks
        offset = 0
        while offset + _EVENT_HEADER.size <= len(data):
            _wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
            masks |= mask
            offset += _EVENT_HEADER.size + length


async def wait_socket_removed(path: str | os.PathLike[str]) -> None:
    """Returns once the file at `path` is deleted, renamed or replaced by another.

    Uses inotify (IN_ATTRIB|IN_DELETE_SELF|IN_MOVE_SELF, re-checking the path
    after each event, as wireguard-go does), or polls every second if inotify
    is unavailable. Returns at once if there is no file.
    """
    name = os.fspath(path)
    fd = _inotify_watch(os.fsencode(name))  # before the first check, so no change is missed
    try:
        identity = _file_identity(name)
        while identity is not None and _file_identity(name) == identity:
            if fd is None:
                await trio.sleep(POLL_INTERVAL)
                continue
            await trio.lowlevel.wait_readable(fd)
            if _drain_events(fd) & IN_IGNORED:
                # The watch ended (file gone or filesystem unmounted): poll from now on.
                trio.lowlevel.notify_closing(fd)
                os.close(fd)
                fd = None
    finally:
        if fd is not None:
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

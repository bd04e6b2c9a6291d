"""The UAPI protocol, sans I/O: what `wg` sends and what it reads back.

Spec: wireguard.com/xplatform; reference: wireguard-go device/uapi.go and
ipc/uapi_*.go; wg(8) ipc-uapi.h. This module opens no socket:
`RequestReader` splits a connection's bytes into requests, `parse_set`
validates a set request into a `DeviceChange` (wgpy.changes applies it) and
`format_get` writes the reply to a get. wgpy.uapi.server does the I/O.

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
- A set is read to its blank line (one cut short by EOF is not applied:
  -EPROTO) and validated whole before anything changes (wgpy.changes).
- Numbers are plain decimal (ASCII digits only); `allowed_ip=-addr/cidr`
  (newer wg) removes one prefix.
- wgpy's own keys start with `wgpy_`; wg ignores them in a get. In a set,
  `wgpy_endpoint_name=host:port` (repeated) gives the names or candidates
  behind a peer's endpoint (wgpy.names; `wgpy up` sends them).
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

import errno
import logging
import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from wgpy._core import PresharedKey, PrivateKey, PublicKey
from wgpy.changes import AllowedIPOp, ChangeError, DeviceChange, PeerChange, invalid
from wgpy.handover import HandoverReport
from wgpy.names import NamedEndpoint, parse_candidate
from wgpy.peer import PeerStats
from wgpy.registry.report import PEER_KEY as REGISTRY_PEER_KEY
from wgpy.registry.report import RegistryReport
from wgpy.registry.report import get_lines as registry_lines

log = logging.getLogger("wgpy.uapi")

MAX_LINE = 4096  # the longest valid line is under 100 bytes
MAX_REQUEST = 64 << 20  # 130,000 allowed IPs are about 3.5 MB

_ZERO_KEY = bytes(32)
_ZERO_KEY_HEX = "0" * 64
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


# --- values --------------------------------------------------------------------


def _key_bytes(key: str, value: str) -> bytes:
    # Go's hex decoding accepts either case; wg sends lowercase.
    if len(value) != 64 or not _HEX_DIGITS.issuperset(value):
        raise invalid(f"{key} must be 64 hex digits")
    return bytes.fromhex(value)


def _decimal(key: str, value: str, maximum: int) -> int:
    """Go's strconv.ParseUint(value, 10, bits): ASCII digits, no sign, space or 0x."""
    if not (value.isascii() and value.isdigit()):
        raise invalid(f"{key} must be a decimal number, not {value[:40]!r}")
    number = int(value)
    if number > maximum:
        raise invalid(f"{key} {number} is out of range (0-{maximum})")
    return number


def _true(key: str, value: str) -> None:
    if value != "true":
        raise invalid(f"{key} must be 'true', not {value[:40]!r}")


def _address(text: str) -> tuple[socket.AddressFamily, str]:
    """The family and canonical text of a literal IP address (no scope ids).

    The canonical text is what the Rust data plane parses, so applying a
    validated request cannot fail on an address.
    """
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        packed = socket.inet_pton(family, text)
    except (OSError, ValueError):  # ValueError: NUL or unencodable characters
        raise invalid(f"not an IP address: {text[:60]!r}") from None
    return family, socket.inet_ntop(family, packed)


def parse_endpoint(value: str) -> tuple[str, int]:
    """`IPv4:port` or `[IPv6]:port` (netip.ParseAddrPort); wg resolves names itself."""
    host, colon, port_text = value.rpartition(":")
    if not colon:
        raise invalid(f"endpoint without a port: {value[:60]!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    family, address = _address(host[1:-1] if bracketed else host)
    if bracketed != (family == socket.AF_INET6):
        raise invalid(f"endpoint {value[:60]!r}: brackets go around IPv6 addresses only")
    return address, _decimal("endpoint port", port_text, 0xFFFF)


def parse_allowed_ip(value: str) -> AllowedIPOp:
    """`addr/cidr` adds a prefix, `-addr/cidr` removes one (netip.ParsePrefix)."""
    remove = value.startswith("-")
    address_text, slash, bits = (value[1:] if remove else value).partition("/")
    if not slash or not (bits.isascii() and bits.isdigit()):
        raise invalid(f"allowed_ip must be addr/cidr, not {value[:60]!r}")
    family, address = _address(address_text)
    cidr = int(bits)
    if cidr > (32 if family == socket.AF_INET else 128):
        raise invalid(f"allowed_ip prefix length out of range: {value[:60]!r}")
    return ("remove" if remove else "add", address, cidr)


# --- parsing a set request --------------------------------------------------------


def parse_set(body: bytes | str) -> DeviceChange:
    """Validates the lines of a set request (between `set=1` and the blank line).

    Raises ChangeError at the first bad line, as wireguard-go stops there;
    nothing has been applied at that point.
    """
    text = body.decode("latin-1") if isinstance(body, bytes) else body
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the body's final newline
    request = DeviceChange()
    peer: PeerChange | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise ChangeError(errno.EPROTO, f"line without '=': {line[:60]!r}")
        if len(line) > MAX_LINE:
            raise ChangeError(errno.EIO, f"line of {len(line)} bytes is too long")
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


def _device_line(request: DeviceChange, key: str, value: str) -> None:
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
        raise invalid(f"invalid device key {key[:40]!r}")


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
    elif key == NAME_KEY:
        try:
            name = parse_candidate(value)
        except ValueError as e:
            raise invalid(str(e)) from None
        peer.endpoint_names = [*(peer.endpoint_names or []), name]
    elif key == "persistent_keepalive_interval":
        peer.persistent_keepalive = _decimal(key, value, 0xFFFF)
    elif key == "replace_allowed_ips":
        _true(key, value)
        peer.allowed_ips.append(("replace", "", 0))
    elif key == "protocol_version":
        if value != "1":
            raise invalid(f"unsupported protocol_version {value[:40]!r}")
    else:
        raise invalid(f"invalid peer key {key[:40]!r}")


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
# Endpoints by name (wgpy.names), peer level, set and get: one line per
# candidate, `host:port` or `[IPv6]:port`. Get only: the addresses they
# resolved to, the Unix time of the last resolution, the last failure.
NAME_KEY = "wgpy_endpoint_name"
NAME_ADDRESS_KEY = "wgpy_endpoint_address"
NAME_RESOLVED_KEY = "wgpy_endpoint_resolved"
NAME_ERROR_KEY = "wgpy_endpoint_error"


def _names_lines(named: NamedEndpoint | None) -> list[str]:
    if named is None:
        return []
    lines = [f"{NAME_KEY}={format_endpoint(c)}" for c in named.candidates]
    lines += [f"{NAME_ADDRESS_KEY}={format_endpoint(a)}" for a in named.addresses]
    if named.resolved_at is not None:
        lines.append(f"{NAME_RESOLVED_KEY}={named.resolved_at:.3f}")
    if named.error:
        lines.append(f"{NAME_ERROR_KEY}={' '.join(named.error.split())}")
    return lines


# The device's counters, one key each: `wgpy_stat_<name>=<integer>` (the data
# plane's DeviceStats counters, under_load 0/1, handshakes_failed, and
# handover's decisions by kind). `wgpy metrics` and the daemon's metrics
# endpoint read them from here.
STAT_KEY_PREFIX = "wgpy_stat_"


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


class PeerView(Protocol):
    public_key: PublicKey
    preshared_key: PresharedKey | None


class DeviceView(Protocol):
    """What a get reports, read from the device (or a test's stand-in)."""

    @property
    def private_key(self) -> PrivateKey | None: ...

    @property
    def listen_port(self) -> int: ...

    @property
    def fwmark(self) -> int: ...

    def handover_report(self) -> HandoverReport | None: ...

    def endpoint_names(self, public_key: PublicKey) -> NamedEndpoint | None: ...

    def uapi_counters(self) -> Sequence[tuple[str, int]]: ...

    def registry_report(self) -> RegistryReport | None: ...

    def uapi_stats(self) -> Sequence[tuple[PeerView, PeerStats, list[tuple[str, int]]]]: ...


def format_get(device: DeviceView) -> bytes:
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
    lines.extend(f"{STAT_KEY_PREFIX}{name}={value}" for name, value in device.uapi_counters())
    reannounced = report.last_reannounce if report is not None else {}
    registry = device.registry_report()
    lines.extend(registry_lines(registry))  # wgpy.registry.report lists the keys
    owned = registry.owned if registry is not None else frozenset()
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
        if peer.public_key in owned:
            lines.append(f"{REGISTRY_PEER_KEY}=true")
        lines.extend(_names_lines(device.endpoint_names(peer.public_key)))
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

    def feed(self, data: bytes | bytearray) -> None:
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

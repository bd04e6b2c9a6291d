"""Talking to a running wgpy (or wireguard-go) daemon over its UAPI socket.

This is the client side of the cross-platform userspace API: what `wg`
does, for the `wgpy up/down/show/metrics` commands and the demo. One
request per connection, as wg(8) does. `parse_get` reads a get reply,
wgpy's extension keys included (wgpy.uapi.protocol lists them); the
daemon's metrics endpoint parses its own reply with it, so every reader
sees the same counters.

- A socket file nobody listens on (connection refused) is stale: its
  daemon is gone. `interfaces()` skips and removes it, as wg(8) does; a
  daemon that ran as another user cannot remove its own socket from a
  root-owned directory (wgpy.privileges).
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from wgpy.registry import report as registry_report

RUN_DIR = Path(os.environ.get("WGPY_RUN_DIR", "/var/run/wireguard"))


class ControlError(Exception):
    """The daemon could not be reached or refused the request."""


def socket_path(iface: str) -> Path:
    return RUN_DIR / f"{iface}.sock"


def is_stale(path: Path) -> bool:
    """Whether `path` is a socket nobody serves any more (and removes it if so)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except ConnectionRefusedError:
            with contextlib.suppress(OSError):
                path.unlink()
            return True
        except OSError:
            return False
    return False


def interfaces() -> list[str]:
    """Interfaces with a live UAPI socket, as `wg show interfaces` lists them."""
    if not RUN_DIR.is_dir():
        return []
    return sorted(p.stem for p in RUN_DIR.glob("*.sock") if p.is_socket() and not is_stale(p))


def _exchange(iface: str, request: bytes, timeout: float = 10.0) -> str:
    path = socket_path(iface)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError as e:
            raise ControlError(f"{iface}: cannot reach {path}: {e.strerror or e}") from None
        s.sendall(request)
        chunks: list[bytes] = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            if b"".join(chunks[-2:]).endswith(b"\n\n"):
                break
    return b"".join(chunks).decode(errors="replace")


def _errno(reply: str) -> int:
    for line in reversed(reply.splitlines()):
        if line.startswith("errno="):
            return int(line[6:])
    raise ControlError("reply without errno")


def set_config(iface: str, lines: list[str]) -> None:
    """Sends `set=1` with the given key=value lines."""
    body = "set=1\n" + "".join(f"{line}\n" for line in lines) + "\n"
    reply = _exchange(iface, body.encode())
    code = _errno(reply)
    if code != 0:
        raise ControlError(f"{iface}: configuration rejected ({os.strerror(abs(code))})")


@dataclass
class PeerState:
    public_key: str
    preshared_key: str | None = None
    endpoint: str | None = None
    last_handshake: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    persistent_keepalive: int = 0
    allowed_ips: list[str] = field(default_factory=list)
    # Reported by wgpy only (extension keys of its UAPI replies).
    invalid_source_packets: int | None = None
    last_reannounce: float | None = None
    # Endpoints by name (wgpy.names): the names or candidates, what they
    # resolved to, when (Unix time), the last failure.
    endpoint_names: list[str] = field(default_factory=list)
    endpoint_addresses: list[str] = field(default_factory=list)
    endpoint_resolved: float | None = None
    endpoint_error: str | None = None
    from_registry: bool = False


@dataclass
class HandoverEvent:
    """One recent handover decision (wgpy.handover), as `wgpy show` reports it."""

    time: float
    kind: str
    peer: str | None  # public key, base64
    detail: str


@dataclass
class DeviceState:
    name: str
    private_key: str | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: list[PeerState] = field(default_factory=list)
    # Reported by wgpy only: "on"/"off", the last underlay change, recent decisions.
    handover: str | None = None
    last_underlay_change: float | None = None
    handover_events: list[HandoverEvent] = field(default_factory=list)
    # Reported by wgpy only: the device's counters (`wgpy_stat_<name>` keys).
    stats: dict[str, int] = field(default_factory=dict)
    # Reported by wgpy only, with a registry (wgpy.registry.report).
    registry: registry_report.RegistryStatus | None = None


def _b64(hex_key: str) -> str:
    import base64

    return base64.b64encode(bytes.fromhex(hex_key)).decode()


def _handover_event(value: str) -> HandoverEvent:
    """`<unix time> <kind> <public key hex or -> <detail>`."""
    at, kind, peer, detail = ([*value.split(" ", 3), "", "", ""])[:4]
    return HandoverEvent(float(at), kind, None if peer in ("-", "") else _b64(peer), detail)


def _endpoint_name_line(peer: PeerState, key: str, value: str) -> None:
    if key == "wgpy_endpoint_name":
        peer.endpoint_names.append(value)
    elif key == "wgpy_endpoint_address":
        peer.endpoint_addresses.append(value)
    elif key == "wgpy_endpoint_resolved":
        peer.endpoint_resolved = float(value)
    elif key == "wgpy_endpoint_error":
        peer.endpoint_error = value


def get_state(iface: str) -> DeviceState:
    """Sends `get=1` and parses the reply."""
    return parse_get(iface, _exchange(iface, b"get=1\n\n"))


def parse_get(iface: str, reply: str) -> DeviceState:
    """A get reply (`key=value` lines ending in `errno=0`), parsed."""
    if _errno(reply) != 0:
        raise ControlError(f"{iface}: get failed")
    state = DeviceState(iface)
    peer: PeerState | None = None
    seconds = 0
    for line in reply.splitlines():
        key, _, value = line.partition("=")
        if key == "public_key":
            peer = PeerState(_b64(value))
            state.peers.append(peer)
        elif peer is None:
            _device_key(state, key, value)
        elif key == "last_handshake_time_sec":
            seconds = int(value)
        elif key == "last_handshake_time_nsec":
            nsec = int(value)
            peer.last_handshake = seconds + nsec / 1e9 if seconds or nsec else None
        else:
            _peer_key(peer, key, value)
    return state


def _device_key(state: DeviceState, key: str, value: str) -> None:
    if key == "private_key":
        state.private_key = _b64(value)
    elif key == "listen_port":
        state.listen_port = int(value)
    elif key == "fwmark":
        state.fwmark = int(value)
    elif key == "wgpy_handover":
        state.handover = value
    elif key == "wgpy_last_underlay_change":
        state.last_underlay_change = float(value)
    elif key == "wgpy_handover_event":
        state.handover_events.append(_handover_event(value))
    elif key.startswith("wgpy_stat_") and value.isdigit():
        state.stats[key.removeprefix("wgpy_stat_")] = int(value)
    elif key.startswith(registry_report.PREFIX):
        state.registry = registry_report.parse_line(state.registry, key, value)


def _peer_key(peer: PeerState, key: str, value: str) -> None:
    if key == "preshared_key":
        peer.preshared_key = None if set(value) == {"0"} else _b64(value)
    elif key == "endpoint":
        peer.endpoint = value
    elif key in ("rx_bytes", "tx_bytes"):
        setattr(peer, key, int(value))
    elif key == "persistent_keepalive_interval":
        peer.persistent_keepalive = int(value)
    elif key == "allowed_ip":
        peer.allowed_ips.append(value)
    elif key == "wgpy_invalid_source_packets":
        peer.invalid_source_packets = int(value)
    elif key == "wgpy_last_reannounce":
        peer.last_reannounce = float(value)
    elif key == registry_report.PEER_KEY:
        peer.from_registry = value == "true"
    elif key.startswith("wgpy_endpoint_"):
        _endpoint_name_line(peer, key, value)

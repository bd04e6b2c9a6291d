"""`wgpy show`: the state of running interfaces, as `wg show` prints it, or JSON.

The JSON form is a stable interface for scripts, schema version
SCHEMA_VERSION, documented in docs/show-json.md and checked against
docs/show.schema.json by the tests: fields are only ever added within a
version; renaming, removing or retyping one makes a new version. Secrets
(private and preshared keys) are never printed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from wgpy._core import PrivateKey
from wgpy.control import DeviceState, PeerState
from wgpy.registry.report import RegistryStatus


def _ago(t: float, now: float) -> str:
    seconds = max(0, int(now - t))
    if seconds == 0:
        return "Now"
    parts = []
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n} {name}{'s' if n != 1 else ''}")
    return ", ".join(parts) + " ago"


def _bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _public_key(state: DeviceState) -> str | None:
    return (
        PrivateKey.from_base64(state.private_key).public_key().to_base64()
        if state.private_key
        else None
    )


def _names_text(p: PeerState, now: float) -> list[str]:
    if not p.endpoint_names:
        return []
    lines = [f"  endpoint names: {', '.join(p.endpoint_names)}"]
    if p.endpoint_addresses:
        when = f" (resolved {_ago(p.endpoint_resolved, now)})" if p.endpoint_resolved else ""
        lines.append(f"  endpoint addresses: {', '.join(p.endpoint_addresses)}{when}")
    if p.endpoint_error:
        lines.append(f"  endpoint resolution failed: {p.endpoint_error}")
    return lines


def _peer_text(p: PeerState, now: float) -> list[str]:
    lines = [f"peer: {p.public_key}"]
    if p.preshared_key:
        lines.append("  preshared key: (hidden)")
    if p.endpoint:
        lines.append(f"  endpoint: {p.endpoint}")
    lines += _names_text(p, now)
    lines.append(f"  allowed ips: {', '.join(p.allowed_ips) if p.allowed_ips else '(none)'}")
    if p.last_handshake:
        lines.append(f"  latest handshake: {_ago(p.last_handshake, now)}")
    if p.rx_bytes or p.tx_bytes:
        lines.append(f"  transfer: {_bytes(p.rx_bytes)} received, {_bytes(p.tx_bytes)} sent")
    if p.persistent_keepalive:
        lines.append(f"  persistent keepalive: every {p.persistent_keepalive} seconds")
    if p.last_reannounce:
        lines.append(f"  re-announced: {_ago(p.last_reannounce, now)}")
    if p.from_registry:
        lines.append("  from: registry")
    return lines


def _registry_text(r: RegistryStatus, now: float) -> list[str]:
    """One line, and one per recent refusal: an outage must be plain to see."""
    counts = f"revision {r.revision}, {r.peers} peers, {r.refused} refused"
    if r.state == "connected":
        line = f"  registry: {r.url} connected ({counts})"
    else:
        since = f" since {_ago(r.since, now)}" if r.since else ""
        line = f"  registry: {r.url} {r.state.upper()}{since}: {r.error or 'no answer yet'}"
        line += f" ({counts}; the peers applied keep forwarding)"
    lines = [line]
    for refusal in r.refusals[-5:]:
        lines.append(f"  registry refused {refusal['entry']}: {refusal['reason']}")
    return lines


def as_text(state: DeviceState) -> str:
    now = time.time()
    lines = [f"interface: {state.name}"]
    pub = _public_key(state)
    if pub:
        lines += [f"  public key: {pub}", "  private key: (hidden)"]
    if state.listen_port:
        lines.append(f"  listening port: {state.listen_port}")
    if state.fwmark:
        lines.append(f"  fwmark: {state.fwmark:#x}")
    if state.handover is not None:
        change = state.last_underlay_change
        since = f" (underlay changed {_ago(change, now)})" if change else ""
        lines.append(f"  handover: {state.handover}{since}")
    if state.registry is not None:
        lines += _registry_text(state.registry, now)
    for p in sorted(state.peers, key=lambda p: p.last_handshake or 0, reverse=True):
        lines.append("")
        lines += _peer_text(p, now)
    return "\n".join(lines)


SCHEMA = "wgpy-show"
SCHEMA_VERSION = 1


def _peer_json(p: PeerState) -> dict[str, object]:
    return {
        "public_key": p.public_key,
        "has_preshared_key": p.preshared_key is not None,
        "endpoint": p.endpoint,
        "allowed_ips": list(p.allowed_ips),
        "last_handshake": p.last_handshake,
        "rx_bytes": p.rx_bytes,
        "tx_bytes": p.tx_bytes,
        "persistent_keepalive": p.persistent_keepalive,
        "invalid_source_packets": p.invalid_source_packets,
        "last_reannounce": p.last_reannounce,
        "endpoint_names": list(p.endpoint_names),
        "endpoint_addresses": list(p.endpoint_addresses),
        "endpoint_resolved": p.endpoint_resolved,
        "endpoint_error": p.endpoint_error,
        "from_registry": p.from_registry,
    }


def _interface_json(s: DeviceState) -> dict[str, object]:
    return {
        "name": s.name,
        "public_key": _public_key(s),
        "listen_port": s.listen_port,
        "fwmark": s.fwmark,
        "handover": s.handover,
        "last_underlay_change": s.last_underlay_change,
        "handover_events": [asdict(e) for e in s.handover_events],
        "stats": dict(s.stats),
        "registry": asdict(s.registry) if s.registry is not None else None,
        "peers": [_peer_json(p) for p in s.peers],
    }


def as_json(states: list[DeviceState]) -> str:
    """The versioned JSON document (module rules)."""
    document = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "interfaces": [_interface_json(s) for s in states],
    }
    return json.dumps(document, indent=2)

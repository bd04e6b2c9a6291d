"""A gateway's registry status, as `get` replies carry it and `wgpy show` reads it.

Extension keys of the UAPI `get` reply (wg ignores keys it does not know),
device level, after the handover keys:

    wgpy_registry=etcd://HOST:PORT/NETWORK     (no user, no options)
    wgpy_registry_state=connected|connecting|disconnected
    wgpy_registry_since=<unix time of the last state change>
    wgpy_registry_revision=<etcd revision the peers reflect>   (once loaded)
    wgpy_registry_peers=<registry peers on this device>
    wgpy_registry_refused=<entries refused now>
    wgpy_registry_reconnects=<sessions lost>  wgpy_registry_reloads=<snapshots loaded>
    wgpy_registry_error=<last connection error, one line>       (if any)
    wgpy_registry_refusal=<unix time> <entry name> <reason>      (recent, oldest first)

and per peer `wgpy_registry_peer=true` for the peers the registry owns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wgpy._core import PublicKey

PREFIX = "wgpy_registry"
PEER_KEY = "wgpy_registry_peer"


@dataclass(frozen=True)
class RegistryReport:
    """What the device's registry sync reports (server side)."""

    url: str
    state: str
    since: float
    revision: int | None
    peers: int
    refused: int
    reconnects: int
    reloads: int
    error: str | None
    refusals: list[tuple[float, str, str]]  # (time, entry name, reason)
    owned: frozenset[PublicKey]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def get_lines(report: RegistryReport | None) -> list[str]:
    if report is None:
        return []
    lines = [
        f"{PREFIX}={report.url}",
        f"{PREFIX}_state={report.state}",
        f"{PREFIX}_since={report.since:.3f}",
    ]
    if report.revision is not None:
        lines.append(f"{PREFIX}_revision={report.revision}")
    lines += [
        f"{PREFIX}_peers={report.peers}",
        f"{PREFIX}_refused={report.refused}",
        f"{PREFIX}_reconnects={report.reconnects}",
        f"{PREFIX}_reloads={report.reloads}",
    ]
    if report.error:
        lines.append(f"{PREFIX}_error={_one_line(report.error)}")
    for at, name, reason in report.refusals:
        lines.append(f"{PREFIX}_refusal={at:.3f} {_one_line(name)} {_one_line(reason)}")
    return lines


@dataclass
class RegistryStatus:
    """The same, read back from a `get` reply (client side, `wgpy show`)."""

    url: str = ""
    state: str = ""
    since: float | None = None
    revision: int | None = None
    peers: int = 0
    refused: int = 0
    reconnects: int = 0
    reloads: int = 0
    error: str | None = None
    refusals: list[dict[str, object]] = field(default_factory=list)


def parse_line(status: RegistryStatus | None, key: str, value: str) -> RegistryStatus:
    """Folds one device-level `wgpy_registry*` line into `status`."""
    status = status or RegistryStatus()
    name = key.removeprefix(PREFIX).lstrip("_") or "url"
    if name in ("url", "state", "error"):
        setattr(status, name, value)
    elif name == "since":
        status.since = float(value)
    elif name in ("revision", "peers", "refused", "reconnects", "reloads"):
        setattr(status, name, int(value))
    elif name == "refusal":
        at, entry, reason = [*value.split(" ", 2), "", ""][:3]
        status.refusals.append({"time": float(at), "entry": entry, "reason": reason})
    return status

"""wg(8) and wg-quick(8) configuration files: parse, write, and key files.

The rules, as wireguard-tools applies them (src/config.c for wg, the
parse_options loop of wg-quick), checked against the installed binaries:

1. A line is cut at its first '#'; what is left and is blank is skipped.
   Lines end at '\\n'; '\\r' is whitespace, so CRLF files work.
2. Sections are [Interface] and [Peer], any case. wg deletes every whitespace
   character of a line before reading it, so "[ Peer ]", "Listen Port = 1"
   and "AllowedIPs = 10.0.0.0 / 8" are what it reads as "[Peer]",
   "ListenPort=1" and "AllowedIPs=10.0.0.0/8".
3. wg keys, any case: [Interface] PrivateKey, ListenPort, FwMark; [Peer]
   PublicKey, PresharedKey, AllowedIPs, Endpoint, PersistentKeepalive. Every
   other key, a key outside a section and a key with no value are errors.
   A repeated key overrides the earlier one, except AllowedIPs, which adds.
4. wg-quick takes its own keys (Address, DNS, MTU, Table, PreUp, PostUp,
   PreDown, PostDown, SaveConfig) out of [Interface] before wg sees the rest.
   It only trims their key and value, so they keep their inner spaces, and it
   only knows the section by a header without inner spaces. Address and DNS
   are split on commas and spaces and repeated lines add; DNS entries that
   look like IP addresses are servers, the others search domains.
5. Every [Peer] needs a PublicKey. wg merges two [Peer] sections with one
   key; we reject that instead, as it is almost always a copy-paste mistake.

Where wg is looser, the value is rejected here instead of being silently
reinterpreted: a port (ListenPort or Endpoint) given as a service name, with
a '+' sign, or above 65535 (glibc truncates it to 16 bits); Endpoint port 0.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from wgpy._core import InvalidKeyError, PresharedKey, PrivateKey, PublicKey

__all__ = [
    "Config",
    "ConfigError",
    "Endpoint",
    "InterfaceConfig",
    "PeerConfig",
    "load",
    "parse",
    "read_key_file",
    "resolve_endpoint",
    "save",
    "write_private_key",
]

StrPath = str | os.PathLike[str]
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
KeyT = TypeVar("KeyT", PrivateKey, PublicKey, PresharedKey)
_T = TypeVar("_T")

# C isspace() in the C locale: what wg deletes and bash's [[:space:]] trims.
# str.strip() would also take Unicode spaces, which both tools keep.
_WS = " \t\n\v\f\r"
_DELETE_WS = str.maketrans("", "", _WS)
# wg-quick splits Address and DNS with ${value//,/ } and word splitting.
_LIST_SPLIT = re.compile(r"[, \t\n]+")
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
# A search domain, or a systemd-resolved routing domain ("~corp", "~.").
_SEARCH_DOMAIN = re.compile(r"~?(\.|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?)")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_HEX = re.compile(r"[0-9a-fA-F]+")

PORT_MAX = 65535
FWMARK_MAX = 0xFFFFFFFF
KEEPALIVE_MAX = 65535
# The IPv4 minimum (RFC 791) and the TUN driver's maximum: what the device takes.
MTU_MIN = 68
MTU_MAX = 65535
TABLE_MAX = 0xFFFFFFFF

_WG_INTERFACE_KEYS = {k.lower(): k for k in ("PrivateKey", "ListenPort", "FwMark")}
_WG_PEER_KEYS = {
    k.lower(): k
    for k in ("PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive")
}
# wgpy's own [Peer] key: more endpoint candidates (wgpy.names); wg refuses it.
_WGPY_PEER_KEYS = {"endpoints": "Endpoints"}
_QUICK_KEYS = {
    k.lower(): k
    for k in (
        "Address",
        "DNS",
        "MTU",
        "Table",
        "SaveConfig",
        "PreUp",
        "PostUp",
        "PreDown",
        "PostDown",
    )
}
_SECRET_KEYS = {"PrivateKey", "PresharedKey"}


class ConfigError(ValueError):
    """A configuration is invalid; str() is "file:line: what is wrong"."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class _Invalid(Exception):
    """A value is malformed; the parser adds the key, the file and the line."""


# --- data model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A peer's UDP address: an IP literal or a host name, and a port.

    `host` never has brackets; an IPv6 address (with an optional %scope) is
    kept in its compressed form, so equal addresses compare equal.
    """

    host: str
    port: int

    def __post_init__(self) -> None:
        try:
            host = _normalize_host(self.host)
            _check_range(self.port, 1, PORT_MAX, "port")
        except _Invalid as e:
            raise ConfigError(f"invalid endpoint {self.host!r} port {self.port!r}: {e}") from None
        object.__setattr__(self, "host", host)

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse "host:port", "1.2.3.4:port" or "[IPv6]:port" as wg does."""
        try:
            return _parse_endpoint(text.translate(_DELETE_WS))
        except _Invalid as e:
            raise ConfigError(f"invalid Endpoint {text!r}: {e}") from None

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass
class InterfaceConfig:
    """The [Interface] section; the fields after `fwmark` are wg-quick's only."""

    private_key: PrivateKey | None = None
    listen_port: int | None = None
    # 0 is "off"; None means the file did not say.
    fwmark: int | None = None
    addresses: list[IPInterface] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    mtu: int | None = None
    table: str | None = None
    pre_up: list[str] = field(default_factory=list)
    post_up: list[str] = field(default_factory=list)
    pre_down: list[str] = field(default_factory=list)
    post_down: list[str] = field(default_factory=list)
    save_config: bool = False

    @property
    def dns_servers(self) -> list[str]:
        """The DNS entries wg-quick gives resolvconf as name servers."""
        return [d for d in self.dns if _is_dns_server(d)]

    @property
    def dns_search(self) -> list[str]:
        """The DNS entries wg-quick gives resolvconf as search domains."""
        return [d for d in self.dns if not _is_dns_server(d)]


@dataclass
class PeerConfig:
    """A [Peer] section."""

    public_key: PublicKey
    preshared_key: PresharedKey | None = None
    # Normalized networks: wg passes 10.0.0.1/24 on and the kernel masks it.
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    endpoint: Endpoint | None = None
    # 0 is "off"; None means the file did not say.
    persistent_keepalive: int | None = None
    # wgpy's extension: candidates besides Endpoint, tried in order (wgpy.names).
    endpoints: list[Endpoint] = field(default_factory=list)


@dataclass
class Config:
    """A whole configuration file."""

    interface: InterfaceConfig = field(default_factory=InterfaceConfig)
    peers: list[PeerConfig] = field(default_factory=list)

    def to_wg(self) -> str:
        """The wg(8) part only, laid out as `wg showconf` prints it."""
        return self._render(quick=False)

    def to_wg_quick(self) -> str:
        """The full wg-quick(8) file: wg-quick keys first, as `wg-quick save` writes them."""
        return self._render(quick=True)

    def _render(self, *, quick: bool) -> str:
        lines = ["[Interface]"]
        if quick:
            lines += _render_quick(self.interface)
        lines += _render_interface(self.interface)
        for peer in self.peers:
            lines += ["", *_render_peer(peer, quick=quick)]
        if not self.peers:
            # showconf ends the [Interface] block with a blank line even without peers.
            lines.append("")
        return "\n".join(lines) + "\n"


# --- value parsers ------------------------------------------------------------------------


def _check_range(value: object, low: int, high: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Invalid(f"{what} must be {low}-{high}")


def _parse_decimal(text: str, low: int, high: int, what: str) -> int:
    # Digits only: strtoul would take "+5", and getaddrinfo a service name.
    if not text or not (text.isascii() and text.isdigit()):
        raise _Invalid(f"{what} must be a decimal number {low}-{high}")
    digits = text.lstrip("0")
    # Python refuses to convert very long digit strings; they are out of range anyway.
    if len(digits) > 20 or not low <= int(text) <= high:
        raise _Invalid(f"{what} must be {low}-{high}")
    return int(text)


def _parse_listen_port(text: str) -> int:
    return _parse_decimal(text, 0, PORT_MAX, "port")


def _parse_fwmark(text: str) -> int:
    if text.lower() == "off":
        return 0
    # wg: strtoul base 16 after a lowercase "0x", base 10 otherwise (so 010 is ten).
    if len(text) > 2 and text.startswith("0x"):
        if not _HEX.fullmatch(text[2:]) or len(text[2:].lstrip("0")) > 8:
            raise _Invalid("must be off, 0-4294967295 or 0x0-0xffffffff")
        return int(text[2:], 16)
    try:
        return _parse_decimal(text, 0, FWMARK_MAX, "fwmark")
    except _Invalid:
        raise _Invalid("must be off, 0-4294967295 or 0x0-0xffffffff") from None


def _parse_keepalive(text: str) -> int:
    if text.lower() == "off":
        return 0
    try:
        return _parse_decimal(text, 0, KEEPALIVE_MAX, "interval")
    except _Invalid:
        raise _Invalid(f"must be off or 0-{KEEPALIVE_MAX} seconds") from None


def _parse_key(cls: type[KeyT], text: str) -> KeyT:
    try:
        return cls.from_base64(text)
    except InvalidKeyError:
        raise _Invalid("a key is 44 characters of base64 ending in '='") from None


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # As wg: a colon means IPv6. A %scope names a link, not a route or an address.
    try:
        if ":" in text:
            if "%" in text:
                raise ValueError
            return ipaddress.IPv6Address(text)
        return ipaddress.IPv4Address(text)
    except ValueError:
        family = "IPv6" if ":" in text else "IPv4"
        raise _Invalid(f"{text!r} is not an {family} address") from None


def _split_prefix(
    text: str,
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    address, slash, prefix = text.partition("/")
    if not address:
        raise _Invalid("no address")
    ip = _parse_ip(address)
    if not slash:
        return ip, ip.max_prefixlen
    # wg reads the prefix with strtoul after a digit: "/024" is 24, a netmask is refused.
    return ip, _parse_decimal(prefix, 0, ip.max_prefixlen, "prefix length")


def _parse_allowed_ip(text: str) -> IPNetwork:
    ip, prefix = _split_prefix(text)
    return ipaddress.ip_network((ip, prefix), strict=False)


def _parse_address(text: str) -> IPInterface:
    ip, prefix = _split_prefix(text)
    if isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv4Interface((ip, prefix))
    return ipaddress.IPv6Interface((ip, prefix))


def ip_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as wg(8) prints it (glibc's inet_ntop): IPv4-mapped and
    IPv4-compatible IPv6 addresses end in dotted quads (::ffff:1.2.3.4),
    which Python's own formatting writes in hex."""
    if address.version == 4:
        return str(address)
    assert isinstance(address, ipaddress.IPv6Address)
    text = socket.inet_ntop(socket.AF_INET6, address.packed)
    return f"{text}%{address.scope_id}" if address.scope_id else text


def network_text(network: IPNetwork) -> str:
    """A prefix as wg(8) prints it: address (see `ip_text`) / length."""
    return f"{ip_text(network.network_address)}/{network.prefixlen}"


def _normalize_host(host: object) -> str:
    if not isinstance(host, str) or not host:
        raise _Invalid("empty host")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ip_text(ipaddress.IPv6Address(host))
        except ValueError:
            raise _Invalid(f"{host!r} is not an IPv6 address") from None
    if _HOST_NAME.fullmatch(host):
        return host
    raise _Invalid(f"{host!r} is not a host name or an IP address")


def _parse_endpoint(text: str) -> Endpoint:
    if not text:
        raise _Invalid("empty")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _Invalid("no ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":") or len(rest) == 1:
            raise _Invalid("no port; write [address]:port")
        port_text = rest[1:]
    else:
        # As wg: the last colon splits, so an unbracketed IPv6 address still works.
        host, colon, port_text = text.rpartition(":")
        if not colon or not port_text:
            raise _Invalid("no port; write host:port or [IPv6]:port")
    # Port 0 is accepted by wg but a datagram cannot be sent to it (Linux: EINVAL).
    port = _parse_decimal(port_text, 1, PORT_MAX, "port")
    return Endpoint(_normalize_host(host), port)


def _is_dns_server(entry: str) -> bool:
    # wg-quick's own test: [[ $v =~ (^[0-9.]+$)|(^.*:.*$) ]]
    return re.fullmatch(r"[0-9.]+", entry) is not None or ":" in entry


def _parse_dns(text: str) -> str:
    if _is_dns_server(text):
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise _Invalid(f"{text!r} is not an IP address") from None
    elif not _SEARCH_DOMAIN.fullmatch(text):
        raise _Invalid(f"{text!r} is neither an IP address nor a search domain")
    return text


def _parse_mtu(text: str) -> int:
    return _parse_decimal(text, MTU_MIN, MTU_MAX, "MTU")


def _parse_table(text: str) -> str:
    # wg-quick: "off" and "auto" are its own words (case-sensitive); anything else
    # goes to `ip route ... table`, which takes a number or a name from rt_tables.
    if text.isascii() and text.isdigit():
        _parse_decimal(text, 0, TABLE_MAX, "table number")
    elif not _TABLE_NAME.fullmatch(text):
        raise _Invalid("must be off, auto, a table number or a table name")
    return text


def _parse_bool(text: str) -> bool:
    # wg-quick's read_bool runs under nocasematch.
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise _Invalid("must be true or false")


# --- the line parser ----------------------------------------------------------------------


@dataclass
class _PeerDraft:
    header_line: int
    public_key: PublicKey | None = None
    public_key_line: int = 0
    preshared_key: PresharedKey | None = None
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    endpoints: list[Endpoint] = field(default_factory=list)


def _ascii_lower(text: str) -> str:
    # strcasecmp folds ASCII only; str.lower() would also fold e.g. the Kelvin sign to 'k'.
    return text.lower() if text.isascii() else text


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path
        self.section: str | None = None
        self.quick_section = False
        self.interface = InterfaceConfig()
        self.peers: list[_PeerDraft] = []
        self.lineno = 0

    def error(self, message: str, line: int | None = None) -> ConfigError:
        return ConfigError(message, path=self.path, line=self.lineno if line is None else line)

    def run(self, text: str) -> Config:
        for self.lineno, raw in enumerate(text.split("\n"), start=1):
            self.line(raw)
        return self.finish()

    def line(self, raw: str) -> None:
        stripped = raw.split("#", 1)[0]
        compact = stripped.translate(_DELETE_WS)
        if not compact:
            return
        # wg-quick's view of the line: trimmed key and value, inner spaces kept.
        quick_key, equals, quick_value = stripped.partition("=")
        quick_key = quick_key.strip(_WS)
        if compact.startswith("["):
            self.header(compact, quick_key)
            return
        if not equals:
            raise self.error(f"expected 'Key = Value', got {stripped.strip(_WS)!r}")
        if _ascii_lower(quick_key) in _QUICK_KEYS:
            self.quick(_QUICK_KEYS[_ascii_lower(quick_key)], quick_value.strip(_WS))
            return
        if _ascii_lower(quick_key) in _WGPY_PEER_KEYS and self.section == "peer":
            items = _split_list(quick_value.replace(",", " "))
            self.peers[-1].endpoints += [self.value("Endpoints", v, _parse_endpoint) for v in items]
            return
        key, _, value = compact.partition("=")
        self.wg(key, quick_key, value)

    def header(self, compact: str, quick_key: str) -> None:
        name = _ascii_lower(compact)
        if name == "[interface]":
            self.section = "interface"
            # wg-quick recognises the header only without inner spaces.
            self.quick_section = _ascii_lower(quick_key) == "[interface]"
        elif name == "[peer]":
            self.section = "peer"
            self.peers.append(_PeerDraft(header_line=self.lineno))
        else:
            raise self.error(f"unknown section {compact!r}; expected [Interface] or [Peer]")

    def quick(self, key: str, value: str) -> None:
        if self.section is None:
            raise self.error(f"{key} is outside of any section; it belongs in [Interface]")
        if self.section == "peer":
            raise self.error(f"{key} is only valid in [Interface], not in [Peer]")
        if not self.quick_section:
            raise self.error(
                f"wg-quick does not see {key} because the [Interface] header "
                "has spaces inside its brackets"
            )
        iface = self.interface
        hooks = {
            "PreUp": iface.pre_up,
            "PostUp": iface.post_up,
            "PreDown": iface.pre_down,
            "PostDown": iface.post_down,
        }
        if key in hooks:
            hooks[key].append(value)
            return
        if key == "Address":
            iface.addresses += [self.value(key, v, _parse_address) for v in _split_list(value)]
        elif key == "DNS":
            iface.dns += [self.value(key, v, _parse_dns) for v in _split_list(value)]
        elif key == "MTU":
            # wg-quick: an empty value leaves the MTU automatic.
            iface.mtu = self.value(key, value, _parse_mtu) if value else None
        elif key == "Table":
            iface.table = self.value(key, value, _parse_table) if value else None
        else:
            iface.save_config = self.value(key, value, _parse_bool)

    def wg(self, key: str, written_key: str, value: str) -> None:
        lowered = _ascii_lower(key)
        if self.section is None:
            raise self.error(f"{written_key!r} is outside of any section")
        own, other = (
            (_WG_INTERFACE_KEYS, _WG_PEER_KEYS)
            if self.section == "interface"
            else (_WG_PEER_KEYS, _WG_INTERFACE_KEYS)
        )
        where = "[Interface]" if self.section == "interface" else "[Peer]"
        if lowered in other:
            raise self.error(f"{other[lowered]} is not valid in {where}")
        if lowered not in own:
            raise self.error(f"unknown key {written_key!r} in {where}")
        canonical = own[lowered]
        if not value:
            # wg refuses "Key =" with nothing after it, even AllowedIPs.
            raise self.error(f"{canonical} has no value")
        if self.section == "interface":
            self.interface_key(canonical, value)
        else:
            self.peer_key(canonical, value)

    def interface_key(self, key: str, value: str) -> None:
        iface = self.interface
        if key == "PrivateKey":
            iface.private_key = self.value(key, value, lambda v: _parse_key(PrivateKey, v))
        elif key == "ListenPort":
            iface.listen_port = self.value(key, value, _parse_listen_port)
        else:
            iface.fwmark = self.value(key, value, _parse_fwmark)

    def peer_key(self, key: str, value: str) -> None:
        peer = self.peers[-1]
        if key == "PublicKey":
            peer.public_key = self.value(key, value, lambda v: _parse_key(PublicKey, v))
            peer.public_key_line = self.lineno
        elif key == "PresharedKey":
            peer.preshared_key = self.value(key, value, lambda v: _parse_key(PresharedKey, v))
        elif key == "AllowedIPs":
            items = value.split(",")
            if "" in items:
                # wg too: strsep gives the empty string, which is no address.
                raise self.error(f"invalid AllowedIPs {value!r}: empty entry")
            peer.allowed_ips += [self.value(key, v, _parse_allowed_ip) for v in items]
        elif key == "Endpoint":
            peer.endpoint = self.value(key, value, _parse_endpoint)
        else:
            peer.persistent_keepalive = self.value(key, value, _parse_keepalive)

    def value(self, key: str, text: str, parse: Callable[[str], _T]) -> _T:
        try:
            return parse(text)
        except _Invalid as e:
            # Never echo a secret into an error message (and so into logs).
            shown = "" if key in _SECRET_KEYS else f" {text!r}"
            raise self.error(f"invalid {key}{shown}: {e}") from None

    def finish(self) -> Config:
        peers: list[PeerConfig] = []
        seen: dict[PublicKey, int] = {}
        for draft in self.peers:
            if draft.public_key is None:
                raise self.error("[Peer] has no PublicKey", draft.header_line)
            first = seen.setdefault(draft.public_key, draft.public_key_line)
            if first != draft.public_key_line:
                raise self.error(
                    f"duplicate peer {draft.public_key.to_base64()} (first at line {first})",
                    draft.public_key_line,
                )
            peers.append(
                PeerConfig(
                    public_key=draft.public_key,
                    preshared_key=draft.preshared_key,
                    allowed_ips=draft.allowed_ips,
                    endpoint=draft.endpoint,
                    persistent_keepalive=draft.persistent_keepalive,
                    endpoints=draft.endpoints,
                )
            )
        return Config(interface=self.interface, peers=peers)


def _split_list(value: str) -> list[str]:
    return [v for v in _LIST_SPLIT.split(value) if v]


def parse(text: str, *, path: str = "<string>") -> Config:
    """Parse a wg(8) or wg-quick(8) configuration; errors name `path` and the line."""
    return _Parser(path).run(text)


def load(path: StrPath) -> Config:
    """Read and parse a configuration file (OSError if it cannot be read)."""
    name = os.fspath(path)
    with open(name, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError("not valid UTF-8", path=name, line=line) from None
    return parse(text, path=name)


# --- writers ------------------------------------------------------------------------------


def _unwritable(what: str, reason: str) -> ConfigError:
    return ConfigError(f"cannot write {what}: {reason}")


def _checked(what: str, check: Callable[[str], object], text: str) -> str:
    # The writer runs each value through the parser, so what it writes reads back.
    try:
        check(text)
    except _Invalid as e:
        raise _unwritable(f"{what} {text!r}", str(e)) from None
    return text


def _render_interface(iface: InterfaceConfig) -> list[str]:
    lines: list[str] = []
    if iface.listen_port is not None:
        lines.append(
            f"ListenPort = {_checked('ListenPort', _parse_listen_port, str(iface.listen_port))}"
        )
    if iface.fwmark is not None:
        mark = "off" if iface.fwmark == 0 else f"0x{iface.fwmark:x}"
        lines.append(f"FwMark = {_checked('FwMark', _parse_fwmark, mark)}")
    if iface.private_key is not None:
        lines.append(f"PrivateKey = {iface.private_key.to_base64()}")
    return lines


def _render_quick(iface: InterfaceConfig) -> list[str]:
    lines: list[str] = []
    if iface.addresses:
        written = [_checked("Address", _parse_address, str(a)) for a in iface.addresses]
        lines.append(f"Address = {', '.join(written)}")
    if iface.dns:
        written = [_checked("DNS", _parse_dns, d) for d in iface.dns]
        lines.append(f"DNS = {', '.join(written)}")
    if iface.mtu is not None:
        lines.append(f"MTU = {_checked('MTU', _parse_mtu, str(iface.mtu))}")
    if iface.table is not None:
        lines.append(f"Table = {_checked('Table', _parse_table, iface.table)}")
    if iface.save_config:
        lines.append("SaveConfig = true")
    for key, hooks in (
        ("PreUp", iface.pre_up),
        ("PostUp", iface.post_up),
        ("PreDown", iface.pre_down),
        ("PostDown", iface.post_down),
    ):
        for hook in hooks:
            if "#" in hook or "\n" in hook or hook != hook.strip(_WS):
                raise _unwritable(
                    f"{key} {hook!r}",
                    "a hook cannot contain '#' or a line break, or start or end with a space",
                )
            lines.append(f"{key} = {hook}")
    return lines


def _render_peer(peer: PeerConfig, *, quick: bool) -> list[str]:
    lines = ["[Peer]", f"PublicKey = {peer.public_key.to_base64()}"]
    if peer.preshared_key is not None:
        lines.append(f"PresharedKey = {peer.preshared_key.to_base64()}")
    if peer.allowed_ips:
        written = [
            _checked("AllowedIPs", _parse_allowed_ip, network_text(n)) for n in peer.allowed_ips
        ]
        lines.append(f"AllowedIPs = {', '.join(written)}")
    if peer.endpoint is not None:
        lines.append(f"Endpoint = {_checked('Endpoint', _parse_endpoint, str(peer.endpoint))}")
    if peer.persistent_keepalive is not None:
        interval = "off" if peer.persistent_keepalive == 0 else str(peer.persistent_keepalive)
        lines.append(
            f"PersistentKeepalive = {_checked('PersistentKeepalive', _parse_keepalive, interval)}"
        )
    if quick and peer.endpoints:
        written = [_checked("Endpoints", _parse_endpoint, str(e)) for e in peer.endpoints]
        lines.append(f"Endpoints = {', '.join(written)}")
    return lines


def save(config: Config, path: StrPath, *, wg_quick: bool = True) -> None:
    """Write `config` to `path` atomically with mode 0600 (it holds the private key)."""
    _write_secret(path, config.to_wg_quick() if wg_quick else config.to_wg())


# --- endpoints and key files --------------------------------------------------------------


def resolve_endpoint(
    endpoint: Endpoint | str, *, family: int = socket.AF_UNSPEC
) -> tuple[str, int]:
    """The first UDP address getaddrinfo gives for `endpoint`, as wg takes it.

    `family` may be socket.AF_INET or AF_INET6 to restrict the answer. Unlike
    wg, this does not retry a temporary DNS failure; the caller decides that.
    """
    if isinstance(endpoint, str):
        endpoint = Endpoint.parse(endpoint)
    try:
        infos = socket.getaddrinfo(
            endpoint.host, endpoint.port, family, socket.SOCK_DGRAM, socket.IPPROTO_UDP
        )
    except socket.gaierror as e:
        raise ConfigError(f"cannot resolve endpoint host {endpoint.host!r}: {e.strerror}") from None
    except UnicodeError:
        raise ConfigError(f"cannot resolve endpoint host {endpoint.host!r}: invalid name") from None
    for fam, _, _, _, sockaddr in infos:
        if fam == socket.AF_INET:
            return str(sockaddr[0]), int(sockaddr[1])
        if fam == socket.AF_INET6 and len(sockaddr) == 4:
            host, port, _, scope_id = sockaddr
            # Python drops the %scope of a link-local address; it is needed to reach it.
            if scope_id and "%" not in host:
                host = f"{host}%{_interface_name(scope_id)}"
            return str(host), int(port)
    raise ConfigError(f"cannot resolve endpoint host {endpoint.host!r}: no IPv4 or IPv6 address")


def _interface_name(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return str(index)


def _write_secret(path: StrPath, text: str) -> None:
    # A new file created 0600 in the same directory, then renamed over the target:
    # the secret is never readable by others, and never half-written.
    target = os.fspath(path)
    directory, name = os.path.split(target)
    temp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    try:
        with open(fd, "w", encoding="utf-8", closefd=True) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def write_private_key(path: StrPath, key: PrivateKey | PresharedKey) -> None:
    """Write a key file as `wg genkey > path` would, but mode 0600 from the start."""
    _write_secret(path, key.to_base64() + "\n")


def read_key_file(path: StrPath, key_type: type[KeyT]) -> KeyT:
    """Read a base64 key file (surrounding whitespace ignored) as `key_type`."""
    name = os.fspath(path)
    with open(name, "rb") as f:
        data = f.read()
    text = data.decode("ascii", errors="replace").strip(_WS)
    if not text:
        raise ConfigError("empty key file", path=name)
    try:
        return key_type.from_base64(text)
    except InvalidKeyError:
        # The content is not echoed: it may be a damaged private key.
        raise ConfigError(
            "not a key: a key is 44 characters of base64 ending in '='", path=name
        ) from None

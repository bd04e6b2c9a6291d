"""How a gateway or `wgpy registry` reaches etcd: URLs and their options.

- `etcd://HOST:PORT[,HOST:PORT...]/NETWORK` (plain HTTP) or
  `etcds://...` (TLS) for a gateway; `wgpy registry --etcd` takes the same
  without the network, and also `http://` and `https://`. IPv6 hosts go in
  brackets; the port defaults to 2379. Several endpoints are tried in turn.
- Query options: `cacert=FILE` (the CA that signed etcd's certificate;
  the system's trust store otherwise), `cert=FILE` and `key=FILE` (a client
  certificate), `user=NAME` (or `NAME@` before the host) with
  `password-file=FILE` (etcd's user authentication), and, for a gateway,
  `psk-dir=DIR` (where preshared key references are looked up; default
  /etc/wgpy/psk/NETWORK).
- A password is never taken from the URL itself (it would show in `ps`):
  `user:password@` is an error. The URL shown by `wgpy show` and the logs
  has no options and no user.
"""

from __future__ import annotations

import ssl
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path

from wgpy.registry.layout import EntryError, network_prefix

DEFAULT_PORT = 2379
DEFAULT_PSK_ROOT = Path("/etc/wgpy/psk")
_SCHEMES = {"etcd": "http", "http": "http", "etcds": "https", "https": "https"}
_OPTIONS = frozenset({"cacert", "cert", "key", "user", "password-file", "psk-dir"})


class RegistryConfigError(ValueError):
    """A registry URL or option is unusable; the message says why."""


@dataclass(frozen=True)
class EtcdTarget:
    """The etcd endpoints and the credentials to use with them."""

    endpoints: tuple[str, ...]  # base URLs: http(s)://HOST:PORT
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password_file: str | None = None

    @property
    def tls(self) -> bool:
        return self.endpoints[0].startswith("https:")

    def ssl_context(self) -> ssl.SSLContext | None:
        """None for plain HTTP; raises RegistryConfigError for unreadable files."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.cacert)
            if self.cert is not None:
                context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            raise RegistryConfigError(f"TLS files: {e}") from None
        return context

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        try:
            return Path(self.password_file).read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise RegistryConfigError(f"cannot read password file: {e}") from None

    def check(self) -> None:
        if (self.cacert or self.cert or self.key) and not self.tls:
            raise RegistryConfigError("cacert/cert/key need TLS: use etcds:// or https://")
        if (self.cert is None) != (self.key is None):
            raise RegistryConfigError("a client certificate needs both cert= and key=")
        if (self.user is None) != (self.password_file is None):
            raise RegistryConfigError("user authentication needs both a user and password-file=")


@dataclass(frozen=True)
class RegistryConfig:
    """A gateway's subscription: which etcd, which network, where its PSKs are."""

    target: EtcdTarget
    network: str
    psk_dir: Path

    def display(self) -> str:
        """The URL without user or options: safe for logs and `wgpy show`."""
        scheme = "etcds" if self.target.tls else "etcd"
        hosts = ",".join(e.split("://", 1)[1] for e in self.target.endpoints)
        return f"{scheme}://{hosts}/{self.network}"


def _hosts(netloc: str, default_scheme: str) -> tuple[str | None, tuple[str, ...]]:
    user, at, hosts = netloc.rpartition("@")
    if at and ":" in user:
        raise RegistryConfigError("no password in the URL: use password-file=FILE")
    endpoints = []
    for host in hosts.split(","):
        parsed = urllib.parse.urlsplit(f"//{host}")
        try:
            port = parsed.port or DEFAULT_PORT
        except ValueError:
            raise RegistryConfigError(f"invalid port in {host!r}") from None
        if not parsed.hostname:
            raise RegistryConfigError(f"no host in {host!r}")
        name = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
        endpoints.append(f"{default_scheme}://{name}:{port}")
    return (urllib.parse.unquote(user) if at else None), tuple(endpoints)


def _split(url: str) -> tuple[EtcdTarget, str, dict[str, str]]:
    """(target, path without slashes, options) of any accepted URL."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in _SCHEMES or not rest:
        raise RegistryConfigError(f"not an etcd URL: {url[:80]!r} (etcd://HOST:PORT/NETWORK)")
    parts = urllib.parse.urlsplit(f"//{rest}")
    user, endpoints = _hosts(parts.netloc, _SCHEMES[scheme.lower()])
    options: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if name not in _OPTIONS:
            raise RegistryConfigError(
                f"unknown option {name!r} (known: {', '.join(sorted(_OPTIONS))})"
            )
        options[name] = value
    target = EtcdTarget(
        endpoints,
        cacert=options.get("cacert"),
        cert=options.get("cert"),
        key=options.get("key"),
        user=options.get("user", user),
        password_file=options.get("password-file"),
    )
    return target, parts.path.strip("/"), options


def parse_etcd_url(
    url: str,
    *,
    cacert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    user: str | None = None,
    password_file: str | None = None,
) -> EtcdTarget:
    """The target of `wgpy registry --etcd URL`; the keyword options (from the
    command line) win over the URL's own."""
    target, path, options = _split(url)
    if path or "psk-dir" in options:
        raise RegistryConfigError("--etcd takes no network or psk-dir (the network is an argument)")
    target = replace(
        target,
        cacert=cacert or target.cacert,
        cert=cert or target.cert,
        key=key or target.key,
        user=user or target.user,
        password_file=password_file or target.password_file,
    )
    target.check()
    return target


def parse_registry_url(url: str) -> RegistryConfig:
    """A gateway's `--registry etcd://HOST:PORT/NETWORK[?options]`."""
    target, network, options = _split(url)
    if not network:
        raise RegistryConfigError("the registry URL names no network: etcd://HOST:PORT/NETWORK")
    try:
        network_prefix(network)
    except EntryError as e:
        raise RegistryConfigError(str(e)) from None
    target.check()
    psk_dir = Path(options.get("psk-dir") or DEFAULT_PSK_ROOT / network)
    return RegistryConfig(target, network, psk_dir)

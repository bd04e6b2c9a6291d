"""`wgpy registry`: a network's peers in etcd, written with transactions.

    wgpy registry --etcd URL [TLS/auth options] NETWORK COMMAND
      add-peer PUBKEY --allowed-ips CIDR[,CIDR] [--endpoint IP:PORT]
               [--persistent-keepalive N] [--preshared-key-ref NAME]
      remove-peer PUBKEY [PUBKEY...]
      list [--json]
      import FILE|-      (a JSON array, as `list --json` prints it)

- `--etcd` (or WGPY_ETCD) is `etcd://HOST:PORT[,HOST:PORT]`, `etcds://...`
  for TLS, or http(s)://; `--cacert`, `--cert`/`--key` and
  `--user`/`--password-file` are docs/registry.md's TLS and authentication
  options (also accepted as URL query options).
- add-peer on an existing peer replaces its entry. An allowed IP that
  belongs to another peer is refused (exit 1), whoever wrote first.
- Errors are one line on stderr (exit 1; 2 for bad usage), never a
  traceback; keys are never printed except public ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn

import trio

from wgpy._core import InvalidKeyError, PublicKey
from wgpy.registry.admin import AdminError, RegistryAdmin
from wgpy.registry.config import RegistryConfigError, parse_etcd_url
from wgpy.registry.etcd import EtcdClient, EtcdError, EtcdUnavailable
from wgpy.registry.layout import EntryError, PeerEntry, entry_from_dict, network_prefix, prefix_text

ETCD_ENV = "WGPY_ETCD"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


DESCRIPTION = "A network's peers in etcd (docs/registry.md)."


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="wgpy registry", description=DESCRIPTION)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`wgpy registry`'s arguments (the `wgpy` parser and `main` share them)."""
    p.add_argument("--etcd", default=os.environ.get(ETCD_ENV), help="etcd://HOST:PORT[,...]")
    p.add_argument("--cacert", help="CA certificate that signed etcd's (TLS)")
    p.add_argument("--cert", help="client certificate (TLS)")
    p.add_argument("--key", help="client certificate's private key (TLS)")
    p.add_argument("--user", help="etcd user name")
    p.add_argument("--password-file", help="file holding the etcd user's password")
    p.add_argument("network")
    commands = p.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add-peer", help="add or replace a peer")
    add.add_argument("public_key")
    add.add_argument("--allowed-ips", required=True, help="CIDR[,CIDR...]")
    add.add_argument("--endpoint", help="IP:PORT or [IPv6]:PORT")
    add.add_argument("--persistent-keepalive", type=int, default=0, metavar="SECONDS")
    add.add_argument("--preshared-key-ref", help="name of a preshared key file on the gateways")
    remove = commands.add_parser("remove-peer", help="remove peers")
    remove.add_argument("public_keys", nargs="+", metavar="PUBKEY")
    listing = commands.add_parser("list", help="the network's peers")
    listing.add_argument("--json", action="store_true")
    bulk = commands.add_parser("import", help="add or replace many peers (JSON array)")
    bulk.add_argument("file", help="a file, or - for standard input")


def _public_key(text: str) -> PublicKey:
    try:
        return PublicKey.from_base64(text)
    except (InvalidKeyError, ValueError):
        raise EntryError(f"not a public key: {text[:60]!r}") from None


def _entry(args: argparse.Namespace) -> PeerEntry:
    d: dict[str, object] = {
        "public_key": _public_key(args.public_key).to_base64(),
        "allowed_ips": [ip.strip() for ip in args.allowed_ips.split(",") if ip.strip()],
        "persistent_keepalive": args.persistent_keepalive,
    }
    if args.endpoint:
        d["endpoint"] = args.endpoint
    if args.preshared_key_ref:
        d["preshared_key_ref"] = args.preshared_key_ref
    return entry_from_dict(d)


def _read_entries(path: str) -> list[PeerEntry]:
    try:
        text = sys.stdin.read() if path == "-" else open(path).read()
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EntryError(f"{path}: {e}") from None
    if not isinstance(data, list):
        raise EntryError(f"{path}: not a JSON array of peers")
    entries = []
    for i, item in enumerate(data):
        try:
            entries.append(entry_from_dict(item))
        except EntryError as e:
            raise EntryError(f"{path}: peer {i + 1}: {e}") from None
    return entries


def _print_table(entries: list[PeerEntry]) -> None:
    print(f"{'PUBLIC KEY':<44}  {'ALLOWED IPS':<32}  {'ENDPOINT':<22}  KEEPALIVE  PSK REF")
    for e in entries:
        ips = ",".join(prefix_text(p) for p in e.allowed_ips) or "-"
        endpoint = e.to_dict().get("endpoint", "-")
        psk = e.preshared_key_ref or "-"
        keepalive = e.persistent_keepalive
        print(f"{e.public_key.to_base64():<44}  {ips:<32}  {endpoint:<22}  {keepalive:<9}  {psk}")


async def _run(args: argparse.Namespace, admin: RegistryAdmin) -> int:
    if args.command == "add-peer":
        outcome = await admin.put_peer(_entry(args))
        print(f"{outcome} peer {args.public_key} in {args.network}")
    elif args.command == "remove-peer":
        for text in args.public_keys:
            await admin.remove_peer(_public_key(text))
            print(f"removed peer {text} from {args.network}")
    elif args.command == "list":
        listing = await admin.listing()
        if args.json:
            print(json.dumps([e.to_dict() for e in listing.entries], indent=2))
        else:
            _print_table(listing.entries)
        for name, reason in listing.problems:
            print(f"wgpy registry: gateways refuse {name}: {reason}", file=sys.stderr)
    else:
        return await _import(args, admin)
    return 0


async def _import(args: argparse.Namespace, admin: RegistryAdmin) -> int:
    entries = _read_entries(args.file)
    results = await admin.import_peers(entries)
    counts = {"added": 0, "updated": 0, "unchanged": 0}
    failed = 0
    for i, entry in enumerate(entries):
        outcome = results[i]
        if isinstance(outcome, AdminError):
            failed += 1
            print(f"wgpy registry: {entry.public_key.to_base64()}: {outcome}", file=sys.stderr)
        else:
            counts[outcome] += 1
    summary = ", ".join(f"{n} {what}" for what, n in counts.items())
    print(f"{summary}, {failed} refused")
    return 1 if failed else 0


async def _connect_and_run(args: argparse.Namespace) -> int:
    target = parse_etcd_url(
        args.etcd,
        cacert=args.cacert,
        cert=args.cert,
        key=args.key,
        user=args.user,
        password_file=args.password_file,
    )
    for endpoint in target.endpoints[:-1]:  # the first one that answers
        try:
            async with EtcdClient(endpoint, target) as client:
                return await _run(args, RegistryAdmin(client, args.network))
        except Exception as e:
            if not isinstance(_known(e), EtcdUnavailable):
                raise
    # Commands are safe to repeat: a write that happened reads back "unchanged".
    async with EtcdClient(target.endpoints[-1], target) as client:
        return await _run(args, RegistryAdmin(client, args.network))


_KNOWN = (AdminError, EntryError, RegistryConfigError, EtcdError)


def _known(e: BaseException) -> Exception | None:
    """The user-facing error in `e` (Trio groups what concurrent tasks raise)."""
    if isinstance(e, _KNOWN):
        return e
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            if (found := _known(inner)) is not None:
                return found
    return None


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        print(f"wgpy registry: {e} (wgpy registry -h)", file=sys.stderr)
        return 2
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Runs the parsed command; 2 for a usage error, 1 for a failure."""
    try:
        if not args.etcd:
            raise UsageError(f"--etcd URL is required (or {ETCD_ENV})")
        network_prefix(args.network)
    except (UsageError, EntryError) as e:
        print(f"wgpy registry: {e} (wgpy registry -h)", file=sys.stderr)
        return 2
    try:
        return trio.run(_connect_and_run, args)
    except Exception as e:
        known = _known(e)
        if known is None:
            raise
        print(f"wgpy registry: {known}", file=sys.stderr)
        return 1

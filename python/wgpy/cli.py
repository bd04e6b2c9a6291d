"""The `wgpy` command.

    wgpy genkey | pubkey | genpsk          keys, as wg(8)
    wgpy up CONFIG|IFACE                   bring up a tunnel (wg-quick semantics)
    wgpy down CONFIG|IFACE                 take it down again
    wgpy show [IFACE] [--json]             state of running interfaces
    wgpy demo [--json]                     a tunnel between two namespaces, measured
    wgpy registry --etcd URL NETWORK add-peer|remove-peer|list|import ...
                                           the peer registry in etcd (wgpy registry -h)
    wgpy [-f/--foreground] [--no-handover] [--registry etcd://HOST:PORT/NETWORK] IFACE
                                           the daemon, as `wireguard-go IFACE`;
                                           --no-handover: ignore underlay changes;
                                           --registry: follow a peer registry

Errors are one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable

from wgpy._core import InvalidKeyError, PresharedKey, PrivateKey

USAGE = __doc__ or ""


def _warn_if_world_readable() -> None:
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError):
        return
    if stat.S_ISREG(mode) and mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IRGRP):
        print(
            "Warning: writing to world accessible file.\n"
            "Consider setting the umask to 077 and trying again.",
            file=sys.stderr,
        )


def genkey(_args: list[str]) -> int:
    _warn_if_world_readable()
    print(PrivateKey.generate().to_base64())
    return 0


def genpsk(_args: list[str]) -> int:
    _warn_if_world_readable()
    print(PresharedKey.generate().to_base64())
    return 0


def pubkey(_args: list[str]) -> int:
    text = sys.stdin.read()
    try:
        key = PrivateKey.from_base64(text.rstrip())
    except InvalidKeyError:
        print("pubkey: Key is not the correct length or format", file=sys.stderr)
        return 1
    print(key.public_key().to_base64())
    return 0


def show(args: list[str]) -> int:
    from wgpy import control, show

    as_json = "--json" in args
    names = [a for a in args if a != "--json"]
    if len(names) > 1 or any(n.startswith("-") for n in names):
        print("Usage: wgpy show [IFACE] [--json]", file=sys.stderr)
        return 1
    names = names or control.interfaces()
    try:
        states = [control.get_state(n) for n in names]
    except control.ControlError as e:
        print(f"wgpy: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(show.as_json(states))
    else:
        print("\n\n".join(show.as_text(s) for s in states))
    return 0


def up(args: list[str]) -> int:
    from wgpy import quick

    return quick.main("up", args)


def down(args: list[str]) -> int:
    from wgpy import quick

    return quick.main("down", args)


def demo(args: list[str]) -> int:
    from wgpy import demo

    return demo.main(args)


def registry(args: list[str]) -> int:  # registry (issue 16)
    from wgpy.registry import cli

    return cli.main(args)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "genkey": genkey,
    "genpsk": genpsk,
    "pubkey": pubkey,
    "show": show,
    "up": up,
    "down": down,
    "demo": demo,
    "registry": registry,  # registry (issue 16)
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE.strip())
        return 0 if args else 1
    if args[0] in ("-v", "--version", "version"):
        from importlib.metadata import version

        print(f"wgpy {version('wgpy')}")
        return 0
    command = COMMANDS.get(args[0])
    try:
        if command is not None:
            return command(args[1:])
        from wgpy import daemon

        return daemon.main(args)
    except KeyboardInterrupt:
        return 130

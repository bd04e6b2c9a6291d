"""The `wgpy` command, on argparse.

- One parser tree (`build_parser`) defines every command and option. The
  man page wgpy(8) and the bash completion are generated from it
  (scripts/gen-docs; a test checks the shipped files are current), so they
  cannot disagree with the command.
- `wgpy [-f] [options] IFACE` is the daemon, as `wireguard-go IFACE`: when the
  first word is neither a command nor a top-level option, the arguments are
  those of `wgpy daemon`.
- `--help` for every command prints its usage on stdout and exits 0;
  `--version` prints the version. A usage error is one line on stderr and
  exit status 2; any other error is one line on stderr and status 1, never
  a traceback.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Callable
from typing import NoReturn

from wgpy._core import InvalidKeyError, PresharedKey, PrivateKey

PROG = "wgpy"
DESCRIPTION = "WireGuard with a Rust core and a Python control plane"
EPILOG = (
    "The daemon form `wgpy [-f] IFACE` is `wgpy daemon [-f] IFACE`, as `wireguard-go IFACE`. "
    "Every wg(8) command works against a running wgpy daemon."
)
# Old spellings still understood (before the parser had them as options).
_ALIASES = {"help": "--help", "version": "--version"}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (README: errors are
    one line on stderr), still with argparse's exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wgpy")
    except PackageNotFoundError:  # running from a source tree without metadata
        return "unknown"


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


# --- the commands ------------------------------------------------------------------


def genkey(_args: argparse.Namespace) -> int:
    _warn_if_world_readable()
    print(PrivateKey.generate().to_base64())
    return 0


def genpsk(_args: argparse.Namespace) -> int:
    _warn_if_world_readable()
    print(PresharedKey.generate().to_base64())
    return 0


def pubkey(_args: argparse.Namespace) -> int:
    text = sys.stdin.read()
    try:
        key = PrivateKey.from_base64(text.rstrip())
    except InvalidKeyError:
        print("pubkey: Key is not the correct length or format", file=sys.stderr)
        return 1
    print(key.public_key().to_base64())
    return 0


def show(args: argparse.Namespace) -> int:
    from wgpy import control, show

    names = [args.interface] if args.interface else control.interfaces()
    try:
        states = [control.get_state(n) for n in names]
    except control.ControlError as e:
        print(f"wgpy: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(show.as_json(states))
    else:
        print("\n\n".join(show.as_text(s) for s in states))
    return 0


def metrics(args: argparse.Namespace) -> int:
    from wgpy import control
    from wgpy.metrics import render

    try:
        state = control.get_state(args.interface)
    except control.ControlError as e:
        print(f"wgpy: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(render([state]).decode())
    return 0


def up(args: argparse.Namespace) -> int:
    from wgpy import quick

    return quick.main("up", args.config, user=args.user)


def down(args: argparse.Namespace) -> int:
    from wgpy import quick

    return quick.main("down", args.config)


def demo(args: argparse.Namespace) -> int:
    from wgpy import demo

    return demo.main(as_json=args.json)


def daemon(args: argparse.Namespace) -> int:
    from wgpy import daemon

    return daemon.main(daemon.Options.from_namespace(args))


# --- the parser --------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT (all addresses)."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, not {text!r}")
    return int(text)


def _add_daemon(commands: argparse._SubParsersAction[Parser]) -> None:
    p = commands.add_parser(
        "daemon",
        help="the userspace daemon (also `wgpy [-f] IFACE`)",
        description=(
            "Creates the TUN interface IFACE and its UAPI socket "
            "/var/run/wireguard/IFACE.sock, then detaches (unless -f) and returns once the "
            "socket accepts connections. Exits on SIGINT/SIGTERM, when the interface is "
            "deleted or the socket removed. Environment: LOG_LEVEL=verbose|debug|info|error|"
            "silent, WG_PROCESS_FOREGROUND=1 (as -f), WGPY_HANDOVER=0 (as --no-handover)."
        ),
    )
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument(
        "--no-handover", action="store_true", help="do not follow underlay changes (handover)"
    )
    p.add_argument(
        "--user",
        metavar="NAME",
        help="once the interface and sockets are open, run as this user, keeping only "
        "CAP_NET_ADMIN (and CAP_NET_BIND_SERVICE for a listen port that needs it)",
    )
    p.add_argument(
        "--listen-port",
        metavar="PORT",
        type=_port,
        help="bind this UDP port from the start (a port below 1024 keeps "
        "CAP_NET_BIND_SERVICE after --user)",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        type=_host_port,
        help="serve Prometheus metrics over HTTP at HOST:PORT (/metrics)",
    )
    p.add_argument(
        "--registry",
        metavar="URL",
        help="follow the peers of a registry in etcd: etcd[s]://[USER@]HOST:PORT[,...]/NETWORK"
        "[?OPTIONS] (docs/registry.md); also WGPY_REGISTRY",
    )
    p.add_argument(
        "--log-file",
        metavar="FILE",
        help="append the log to FILE (default: stderr in the foreground, syslog when detached)",
    )
    p.add_argument("interface", metavar="IFACE", help="the interface name")
    p.set_defaults(run=daemon)


def _add_commands(commands: argparse._SubParsersAction[Parser]) -> None:
    for name, run, text in (
        ("genkey", genkey, "print a new private key (as `wg genkey`)"),
        ("genpsk", genpsk, "print a new preshared key (as `wg genpsk`)"),
        ("pubkey", pubkey, "read a private key on stdin, print its public key"),
    ):
        commands.add_parser(name, help=text, description=text).set_defaults(run=run)
    p = commands.add_parser("show", help="state of running interfaces, as `wg show`")
    p.add_argument("interface", metavar="IFACE", nargs="?", help="one interface (default: all)")
    p.add_argument(
        "--json", action="store_true", help="JSON, schema docs/show-json.md (never keys)"
    )
    p.set_defaults(run=show)
    p = commands.add_parser("metrics", help="print an interface's Prometheus metrics once")
    p.add_argument("interface", metavar="IFACE", help="the interface name")
    p.set_defaults(run=metrics)
    p = commands.add_parser("up", help="bring up a tunnel, as wg-quick(8) up")
    p.add_argument("config", metavar="CONFIG|IFACE", help="a .conf file or an interface name")
    p.add_argument("--user", metavar="NAME", help="the daemon runs as this user (see daemon)")
    p.set_defaults(run=up)
    p = commands.add_parser("down", help="take a tunnel down, as wg-quick(8) down")
    p.add_argument("config", metavar="CONFIG|IFACE", help="a .conf file or an interface name")
    p.set_defaults(run=down)
    _add_modules(commands)
    p = commands.add_parser("demo", help="a measured tunnel between two namespaces")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(run=demo)


def _add_modules(commands: argparse._SubParsersAction[Parser]) -> None:
    """Commands whose module defines its own arguments."""
    from wgpy import forward, proxy
    from wgpy.registry import cli as registry

    for name, module, text in (
        ("proxy", proxy, "SOCKS5 and HTTP proxies into a tunnel, without root or TUN"),
        ("forward", forward, "port forwards through a tunnel, without root or TUN"),
        ("registry", registry, "write and read a network's peers in etcd"),
    ):
        p = commands.add_parser(name, help=text, description=module.DESCRIPTION)
        module.add_arguments(p)
        p.set_defaults(run=module.run_command)


def build_parser() -> Parser:
    """The whole command line, for main() and the docs generator."""
    parser = Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("-v", "--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(
        title="commands", metavar="COMMAND", dest="command", required=True
    )
    _add_commands(commands)
    _add_daemon(commands)
    return parser


def _normalize(args: list[str], parser: Parser) -> list[str]:
    """The wireguard-go form `wgpy [-f] IFACE` as `wgpy daemon [-f] IFACE`."""
    if not args:
        return args
    args = [_ALIASES.get(args[0], args[0]), *args[1:]]
    known: set[str] = set()
    for action in parser._actions:
        known.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            known.update(action.choices)
    return args if args[0] in known else ["daemon", *args]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_normalize(sys.argv[1:] if argv is None else argv, parser))
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130

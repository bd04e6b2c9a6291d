"""`wgpy up` / `wgpy down`: wg-quick(8) for wgpy, in Python.

The steps and their order are wg-quick's (linux.bash):
- up: PreUp hooks, start the daemon (`wgpy IFACE`), apply the wg(8) part of
  the file through the UAPI socket, addresses, MTU (the file's, else the
  largest route MTU towards the endpoints or the default route, minus 80),
  DNS through resolvconf, a route per allowed IP (longest prefixes first;
  Table=off skips them, Table=N puts them in table N), PostUp hooks.
- A /0 allowed IP (full tunnel) uses policy routing: the device gets fwmark
  51820 (or the first free table number), its table holds the default
  route, and two rules send everything not marked there while keeping the
  main table's more specific routes (`suppress_prefixlength 0`).
- A full tunnel also gets wg-quick's nftables table `wg-quick-IFACE` per
  address family, the same rules (tests compare them with wg-quick's own):
  packets for the interface's addresses that arrive on another interface
  from a non-local source are dropped (anti-spoofing), and the fwmark of
  the tunnel's UDP packets is saved in and restored from conntrack, so
  replies to them are routed outside the tunnel. Without `nft` this step is
  skipped with a warning (wg-quick would fall back to iptables).
- down: PreDown hooks, SaveConfig, the policy rules, the nftables tables,
  the interface (which stops the daemon), DNS, PostDown hooks.
- `--user NAME` starts the daemon with that option (wgpy.privileges), and
  with the file's ListenPort from the start (a port below 1024 keeps
  CAP_NET_BIND_SERVICE).
- If `up` fails half-way, what it set up is taken down again.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wgpy import control
from wgpy._core import PresharedKey, PrivateKey, PublicKey
from wgpy.config import Config, ConfigError, Endpoint, PeerConfig, load, resolve_endpoint, save
from wgpy.names import is_address
from wgpy.tun import valid_interface_name

CONFIG_DIR = Path("/etc/wireguard")
DEFAULT_TABLE = 51820
FIB_RULE_INVERT = 0x2
MAIN_TABLE = 254
RTPROT_BOOT = 3
RT_SCOPE_LINK = 253
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class QuickError(Exception):
    pass


def config_path(arg: str) -> tuple[Path, str]:
    """wg-quick's rule: a bare interface name means /etc/wireguard/NAME.conf."""
    if "/" not in arg and not arg.endswith(".conf"):
        path = CONFIG_DIR / f"{arg}.conf"
    else:
        path = Path(arg)
    name = path.name.removesuffix(".conf")
    if not path.name.endswith(".conf") or not valid_interface_name(name):
        raise QuickError(
            f"the config file must be a valid interface name followed by .conf: {path}"
        )
    return path, name


def run_hooks(commands: list[str], iface: str) -> None:
    for cmd in commands:
        cmd = cmd.replace("%i", iface)
        print(f"[#] {cmd}", file=sys.stderr)
        if subprocess.run(["bash", "-c", cmd], check=False).returncode != 0:
            raise QuickError(f"hook failed: {cmd}")


def uapi_lines(config: Config) -> list[str]:
    """The `set=1` body `wg setconf` would send for this file."""
    i = config.interface
    lines = [
        f"private_key={i.private_key.to_bytes().hex()}"
        if i.private_key
        else "private_key=" + "0" * 64
    ]
    if i.listen_port is not None:
        lines.append(f"listen_port={i.listen_port}")
    if i.fwmark is not None:
        lines.append(f"fwmark={i.fwmark}")
    lines.append("replace_peers=true")
    for p in config.peers:
        lines.append(f"public_key={bytes(p.public_key).hex()}")
        if p.preshared_key is not None:
            lines.append(f"preshared_key={p.preshared_key.to_bytes().hex()}")
        lines += _endpoint_lines(p)
        if p.persistent_keepalive:
            lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
        lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={net}" for net in p.allowed_ips]
    return lines


def _endpoint_lines(p: PeerConfig) -> list[str]:
    """The endpoint, resolved as wg does; if it is a name, or there are
    candidates (`Endpoints`), those too, for wgpy.names to keep current."""
    lines = []
    if p.endpoint is not None:
        host, port = resolve_endpoint(p.endpoint)
        lines.append(f"endpoint=[{host}]:{port}" if ":" in host else f"endpoint={host}:{port}")
    candidates = ([p.endpoint] if p.endpoint is not None else []) + p.endpoints
    if p.endpoints or (p.endpoint is not None and not is_address(p.endpoint.host)):
        lines += [f"wgpy_endpoint_name={c}" for c in candidates]
    return lines


def _link_mtu(ipr: IPRoute, index: int) -> int:
    links = ipr.get_links(index)
    return int(links[0].get_attr("IFLA_MTU") or 0) if links else 0


def _route_mtu(ipr: IPRoute, dst: str | None) -> int:
    try:
        routes = ipr.route("get", dst=dst) if dst else ipr.get_default_routes()
    except NetlinkError:
        return 0
    best = 0
    for r in routes:
        metrics = r.get_attr("RTA_METRICS")
        mtu = metrics.get_attr("RTAX_MTU") if metrics is not None else None
        oif = r.get_attr("RTA_OIF")
        best = max(best, int(mtu) if mtu else (_link_mtu(ipr, oif) if oif else 0))
    return best


def tunnel_mtu(config: Config, ipr: IPRoute) -> int:
    if config.interface.mtu:
        return config.interface.mtu
    mtu = 0
    for p in config.peers:
        if p.endpoint is not None:
            host, _ = resolve_endpoint(p.endpoint)
            mtu = max(mtu, _route_mtu(ipr, host))
    if mtu == 0:
        mtu = _route_mtu(ipr, None)
    return (mtu or 1500) - 80


def _next_priority(ipr: IPRoute, family: int) -> int:
    """What the kernel picks for a rule added without a priority."""
    prefs = sorted(r.get_attr("FRA_PRIORITY") or 0 for r in ipr.get_rules(family=family))
    nonzero = [p for p in prefs if p > 0]
    return (nonzero[0] if nonzero else 32766) - 1


def _free_table(ipr: IPRoute) -> int:
    table = DEFAULT_TABLE
    while any(ipr.get_routes(family=f, table=table) for f in (2, 10)):
        table += 1
    return table


def _route(ipr: IPRoute, net: IPNetwork, index: int, table: int | None = None) -> None:
    """A route through the interface, as `ip route add NET dev IFACE` makes it
    (protocol boot, link scope for IPv4), so it reads the same as wg-quick's."""
    family = 10 if net.version == 6 else 2
    extra: dict[str, int] = {} if table is None else {"table": table}
    if family == 2:
        extra["scope"] = RT_SCOPE_LINK
    ipr.route("replace", dst=str(net), oif=index, family=family, proto=RTPROT_BOOT, **extra)


def add_routes(config: Config, iface: str, index: int, ipr: IPRoute) -> None:
    table_opt = config.interface.table
    if table_opt == "off":
        return
    nets = sorted(
        {net for p in config.peers for net in p.allowed_ips},
        key=lambda n: (n.prefixlen, n.version),
        reverse=True,
    )
    fwmark: int | None = config.interface.fwmark or None
    for net in nets:
        family = 10 if net.version == 6 else 2
        if table_opt not in (None, "auto"):
            _route(ipr, net, index, int(table_opt))
        elif net.prefixlen == 0:
            if fwmark is None:
                fwmark = _free_table(ipr)
                control.set_config(iface, [f"fwmark={fwmark}"])
            ipr.rule(
                "add",
                table=fwmark,
                fwmark=fwmark,
                flags=FIB_RULE_INVERT,
                family=family,
                priority=_next_priority(ipr, family),
            )
            ipr.rule(
                "add",
                table=MAIN_TABLE,
                suppress_prefixlen=0,
                family=family,
                priority=_next_priority(ipr, family),
            )
            _route(ipr, net, index, fwmark)
            add_firewall(iface, index, family, fwmark, ipr)
            if family == 2:
                Path("/proc/sys/net/ipv4/conf/all/src_valid_mark").write_text("1\n")
        else:
            _route(ipr, net, index)


def remove_policy_rules(iface: str, ipr: IPRoute) -> None:
    """Removes the rules `add_routes` made for a full tunnel (by the device's fwmark)."""
    try:
        fwmark = control.get_state(iface).fwmark
    except control.ControlError:
        fwmark = 0
    if not fwmark:
        return
    for family in (2, 10):
        for rule in ipr.get_rules(family=family):
            table = rule.get_attr("FRA_TABLE")
            suppress = rule.get_attr("FRA_SUPPRESS_PREFIXLEN")
            if table == fwmark or (table == MAIN_TABLE and suppress == 0):
                ipr.rule("del", family=family, priority=rule.get_attr("FRA_PRIORITY"), table=table)


def firewall_table(iface: str) -> str:
    return f"wg-quick-{iface}"


def firewall_rules(iface: str, family: int, fwmark: int, addresses: list[str]) -> str:
    """wg-quick's nft script for one address family of a full tunnel."""
    pf = "ip6" if family == 10 else "ip"
    table = f"{pf} {firewall_table(iface)}"
    lines = [
        f"add table {table}",
        f"add chain {table} preraw {{ type filter hook prerouting priority -300; }}",
        f"add chain {table} premangle {{ type filter hook prerouting priority -150; }}",
        f"add chain {table} postmangle {{ type filter hook postrouting priority -150; }}",
    ]
    lines += [
        f'add rule {table} preraw iifname != "{iface}" {pf} daddr {a} fib saddr type != local drop'
        for a in addresses
    ]
    lines.append(f"add rule {table} postmangle meta l4proto udp mark {fwmark} ct mark set mark")
    lines.append(f"add rule {table} premangle meta l4proto udp meta mark set ct mark")
    return "\n".join(lines) + "\n"


def _nft(script: str) -> None:
    r = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    if r.returncode != 0:
        raise QuickError(f"nft: {r.stderr.strip() or 'failed'}")


def add_firewall(iface: str, index: int, family: int, fwmark: int, ipr: IPRoute) -> None:
    """The nftables rules of a full tunnel (module rules), for the addresses
    the interface has now in `family`, as wg-quick reads them."""
    if shutil.which("nft") is None:
        print("[!] nft is not installed: no anti-spoofing firewall rules", file=sys.stderr)
        return
    addresses = [str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=index, family=family)]
    _nft(firewall_rules(iface, family, fwmark, addresses))


def remove_firewall(iface: str) -> None:
    """Deletes the interface's nftables tables (those wg-quick would delete)."""
    if shutil.which("nft") is None:
        return
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    suffix = f" {firewall_table(iface)}"
    script = "".join(
        f"delete {line.strip()}\n"
        for line in listed.stdout.splitlines()
        if line.strip().startswith("table ") and line.strip().endswith(suffix)
    )
    if script:
        _nft(script)


def set_dns(config: Config, iface: str) -> bool:
    dns = config.interface.dns
    if not dns:
        return False
    if shutil.which("resolvconf") is None:
        raise QuickError("DNS is set but resolvconf is not installed")
    lines = []
    for entry in dns:
        try:
            ipaddress.ip_address(entry)
            lines.append(f"nameserver {entry}")
        except ValueError:
            lines.append(f"search {entry}")
    subprocess.run(
        ["resolvconf", "-a", f"tun.{iface}", "-m", "0", "-x"],
        input="\n".join(lines) + "\n",
        text=True,
        check=True,
    )
    return True


def unset_dns(iface: str) -> None:
    if shutil.which("resolvconf") is not None:
        subprocess.run(["resolvconf", "-d", f"tun.{iface}", "-f"], capture_output=True, check=False)


def delete_link(iface: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=iface)
        if found:
            ipr.link("del", index=found[0])
    # The daemon exits when its TUN device goes; give it a moment to remove
    # its socket (one that ran as another user may not be able to: its
    # socket is then stale, and removed here).
    path = control.socket_path(iface)
    deadline = time.monotonic() + 5
    while path.exists() and not control.is_stale(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def start_daemon(iface: str, config: Config, user: str | None) -> None:
    options = []
    if user is not None:
        options += ["--user", user]
        if config.interface.listen_port:
            options += ["--listen-port", str(config.interface.listen_port)]
    r = subprocess.run(
        [sys.executable, "-m", "wgpy", *options, iface], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        raise QuickError(r.stderr.strip().removeprefix("wgpy: ") or "the daemon failed to start")


def up(path: Path, iface: str, user: str | None = None) -> None:
    config = load(str(path))
    with IPRoute() as ipr:
        if ipr.link_lookup(ifname=iface):
            raise QuickError(f"`{iface}' already exists")
    run_hooks(config.interface.pre_up, iface)
    start_daemon(iface, config, user)
    try:
        control.set_config(iface, uapi_lines(config))
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=iface)[0]
            for addr in config.interface.addresses:
                ipr.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)
            ipr.link("set", index=index, mtu=tunnel_mtu(config, ipr), state="up")
            set_dns(config, iface)
            add_routes(config, iface, index, ipr)
        run_hooks(config.interface.post_up, iface)
    except BaseException:
        with IPRoute() as ipr:
            remove_policy_rules(iface, ipr)
        remove_firewall(iface)
        delete_link(iface)
        unset_dns(iface)
        raise


def save_config(path: Path, iface: str, config: Config) -> None:
    """SaveConfig: the running peers and keys (what `wg showconf` gives), the
    interface's current addresses, and the file's other wg-quick settings."""
    state = control.get_state(iface)
    peers = [
        PeerConfig(
            public_key=PublicKey.from_base64(p.public_key),
            preshared_key=PresharedKey.from_base64(p.preshared_key) if p.preshared_key else None,
            allowed_ips=[ipaddress.ip_network(a, strict=False) for a in p.allowed_ips],
            endpoint=_saved_endpoint(p),
            persistent_keepalive=p.persistent_keepalive or None,
            endpoints=[Endpoint.parse(e) for e in p.endpoint_names[1:]],
        )
        for p in state.peers
    ]
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=iface)[0]
        addresses = [
            ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr(index=index)
        ]
    interface = dataclasses.replace(
        config.interface,
        private_key=PrivateKey.from_base64(state.private_key) if state.private_key else None,
        listen_port=state.listen_port or None,
        fwmark=state.fwmark or None,
        addresses=addresses,
    )
    save(Config(interface=interface, peers=peers), path)


def _saved_endpoint(p: control.PeerState) -> Endpoint | None:
    """The name behind the endpoint if it has one (SaveConfig keeps names)."""
    if p.endpoint_names:
        return Endpoint.parse(p.endpoint_names[0])
    return Endpoint.parse(p.endpoint) if p.endpoint else None


def down(path: Path | None, iface: str) -> None:
    if iface not in control.interfaces():
        raise QuickError(f"`{iface}' is not a WireGuard interface")
    config = load(str(path)) if path is not None and path.exists() else None
    if config is not None:
        run_hooks(config.interface.pre_down, iface)
        if config.interface.save_config and path is not None:
            save_config(path, iface, config)
    with IPRoute() as ipr:
        remove_policy_rules(iface, ipr)
    remove_firewall(iface)
    delete_link(iface)
    unset_dns(iface)
    if config is not None:
        run_hooks(config.interface.post_down, iface)


def main(action: str, arg: str, *, user: str | None = None) -> int:
    if os.geteuid() != 0:
        print(f"wgpy {action}: needs root (CAP_NET_ADMIN)", file=sys.stderr)
        return 1
    try:
        path, iface = config_path(arg)
        if action == "up":
            up(path, iface, user)
        else:
            down(path, iface)
    except (QuickError, ConfigError, control.ControlError, NetlinkError, OSError) as e:
        message = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        print(f"wgpy {action}: {message}", file=sys.stderr)
        return 1
    return 0

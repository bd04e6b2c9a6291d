"""The configurations compared, and building each one in fresh namespaces.

Every configuration is two namespaces joined by a veth pair (the test
helpers' NetnsLab and make_pair). Side a is the client: it sends the bulk
traffic and, in a tunnel, knows b's endpoint and so initiates the handshake.
Side b runs the servers (iperf3, the first-packet receiver).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from netns import Namespace, NetnsLab
from wgnet import (
    BORINGTUN,
    INNER_V4,
    OUTER_V4,
    WGPY,
    WIREGUARD_GO,
    WIREGUARD_GO_HEAD,
    Pair,
    make_pair,
    program,
)

# Daemons log nothing below errors while measured: logging costs CPU, and
# the two implementations' debug output differs.
DAEMON_LOG_LEVEL = "error"


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    sender: str | None  # implementation on side a; None: raw veth, no tunnel
    receiver: str | None
    # Environment of both daemons (a wgpy variant: --wgpy-variant).
    env: tuple[tuple[str, str], ...] = ()

    @property
    def tunnel(self) -> bool:
        return self.sender is not None

    def programs(self) -> list[str]:
        """Programs this configuration needs besides iperf3, ping and ip."""
        needed = [program(impl) for impl in {self.sender, self.receiver} - {None, WGPY}]
        if self.tunnel:
            needed.append("wg")
        return needed


VETH = Config("veth", "raw veth", None, None)
WGPY_WGPY = Config("wgpy-wgpy", "wgpy↔wgpy", WGPY, WGPY)
HEAD_HEAD = Config(
    "wggohead-wggohead", "wg-go (current)↔same", WIREGUARD_GO_HEAD, WIREGUARD_GO_HEAD
)
WGGO_WGGO = Config("wggo-wggo", "wg-go (Debian)↔same", WIREGUARD_GO, WIREGUARD_GO)
BORINGTUN_BORINGTUN = Config("boringtun-boringtun", "boringtun↔boringtun", BORINGTUN, BORINGTUN)
WGPY_HEAD = Config("wgpy-wggohead", "wgpy→wg-go (current)", WGPY, WIREGUARD_GO_HEAD)
WGPY_WGGO = Config("wgpy-wggo", "wgpy→wg-go (Debian)", WGPY, WIREGUARD_GO)
CONFIGS = (VETH, WGPY_WGPY, HEAD_HEAD, WGGO_WGGO, BORINGTUN_BORINGTUN, WGPY_HEAD, WGPY_WGGO)
BY_KEY = {c.key: c for c in CONFIGS}
# Ratios are against current wireguard-go when it is there, else Debian's.
BASELINES = (HEAD_HEAD.key, WGGO_WGGO.key)
SUBJECT = WGPY_WGPY.key  # the targets are about this one


def add_variant(spec: str) -> Config:
    """Registers a wgpy↔wgpy configuration whose daemons run with extra
    environment variables, from `NAME:VAR=VALUE[,VAR=VALUE...]` (e.g.
    `q2:WGPY_QUEUES=2`, or `base:PYTHONPATH=/path/to/another/site-packages`
    to measure another build in the same run); its key is `wgpy-NAME`."""
    name, _, assignments = spec.partition(":")
    env = []
    for item in filter(None, (a.strip() for a in assignments.split(","))):
        var, eq, value = item.partition("=")
        if not eq or not var:
            raise ValueError(f"--wgpy-variant {spec!r}: {item!r} is not VAR=VALUE")
        env.append((var, value))
    if not env:
        raise ValueError(f"--wgpy-variant {spec!r}: give NAME:VAR=VALUE[,VAR=VALUE...]")
    if not name.isidentifier() or f"wgpy-{name}" in BY_KEY:
        raise ValueError(f"--wgpy-variant {spec!r}: bad or duplicate name {name!r}")
    config = Config(f"wgpy-{name}", f"wgpy↔wgpy ({name})", WGPY, WGPY, tuple(env))
    BY_KEY[config.key] = config
    return config


def missing_programs(config: Config) -> list[str]:
    return [p for p in config.programs() if shutil.which(p) is None]


@dataclass
class Setup:
    """One configuration, built and ready to carry traffic."""

    config: Config
    lab: NetnsLab
    client: Namespace
    server: Namespace
    address: str  # the address on side b that side a sends to
    daemons: dict[str, int]  # role ("sender", "receiver") -> pid of the WireGuard process
    pair: Pair | None
    # The interface the inner traffic leaves side a by and reaches side b's
    # kernel through: the TUN devices in a tunnel, the veth ends without one.
    sender_link: str = ""
    receiver_link: str = ""


def build(lab: NetnsLab, config: Config) -> Setup:
    """Create `config` in new namespaces of `lab` (which removes them at cleanup)."""
    if config.sender is None or config.receiver is None:
        a, b = lab.namespace(), lab.namespace()
        veth = lab.veth(a, b, [f"{OUTER_V4[0]}/24"], [f"{OUTER_V4[1]}/24"])
        return Setup(config, lab, a, b, OUTER_V4[1], {}, None, veth.a_ifname, veth.b_ifname)
    pair = make_pair(
        lab, config.sender, config.receiver, log_level=DAEMON_LOG_LEVEL, env=dict(config.env)
    )
    daemons = {"sender": pair.a.process.pid, "receiver": pair.b.process.pid}
    return Setup(
        config, lab, pair.a.ns, pair.b.ns, INNER_V4[1], daemons, pair, pair.a.iface, pair.b.iface
    )


def reset_tunnel(setup: Setup) -> None:
    """Forget the tunnel's sessions on both sides (remove and re-add each peer),
    so the next packet again needs a handshake, as on a fresh tunnel."""
    pair = setup.pair
    if pair is None:
        return
    for node, other in ((pair.a, pair.b), (pair.b, pair.a)):
        node.wg("set", node.iface, "peer", other.public_key.to_base64(), "remove")
    pair.a.set_peer(pair.b, [f"{INNER_V4[1]}/32"], endpoint=(pair.outer[1], pair.b.port))
    pair.b.set_peer(pair.a, [f"{INNER_V4[0]}/32"])

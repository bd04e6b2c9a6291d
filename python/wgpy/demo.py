"""`wgpy demo`: a real tunnel between two network namespaces on this machine.

It creates two namespaces joined by a veth pair, starts a wgpy daemon in
each, configures them through the UAPI socket as `wg` would, and reports the
handshake, a ping through the tunnel and a short TCP throughput figure.
Everything it creates is removed again, also on failure or Ctrl-C. Only
addresses inside the two namespaces are used.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

from wgpy import control
from wgpy._core import PrivateKey

OUTER = ("10.199.0.1", "10.199.0.2")
INNER = ("10.200.99.1", "10.200.99.2")
PORTS = (51901, 51902)

SINK = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = 0; t0 = time.monotonic()
while (d := c.recv(1 << 20)):
    n += len(d)
print(n, time.monotonic() - t0, flush=True)
"""

SOURCE = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 5201)); buf = b"x" * (1 << 16)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    c.sendall(buf)
c.close()
"""


class DemoError(Exception):
    pass


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ifaces: list[str] = field(default_factory=list)

    def run(self, *argv: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
        full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
        r = subprocess.run(full, capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise DemoError(f"{' '.join(argv)}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def cleanup(self) -> None:
        for iface in self.ifaces:
            with contextlib.suppress(OSError):
                control.socket_path(iface).unlink()
        for p in self.daemons:
            with contextlib.suppress(OSError):
                p.terminate()
        for p in self.daemons:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _start_daemon(lab: Lab, ns: str, iface: str) -> None:
    env = dict(os.environ, LOG_LEVEL=os.environ.get("LOG_LEVEL", "error"))
    p = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "wgpy", "-f", iface],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lab.daemons.append(p)
    lab.ifaces.append(iface)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if p.poll() is not None:
            err = p.stderr.read().decode().strip() if p.stderr else ""
            raise DemoError(f"daemon for {iface} exited: {err}")
        with contextlib.suppress(control.ControlError):
            control.get_state(iface)
            return
        time.sleep(0.05)
    raise DemoError(f"daemon for {iface} did not start")


def run_demo() -> dict[str, object]:
    if os.geteuid() != 0:
        raise DemoError("the demo creates network namespaces and TUN devices: run it as root")
    lab = Lab()
    try:
        namespaces = _namespaces(lab)
        ifaces = (f"wgdemo{lab.tag}a", f"wgdemo{lab.tag}b")
        started = time.time()
        _tunnel(lab, namespaces, ifaces)
        result: dict[str, object] = {"interfaces": list(ifaces), "namespaces": list(namespaces)}
        result.update(_measure(lab, namespaces, ifaces[0], started))
        return result
    finally:
        lab.cleanup()


def _namespaces(lab: Lab) -> tuple[str, str]:
    """Two namespaces joined by a veth pair on OUTER."""
    a, b = f"wgpy-demo-{lab.tag}-a", f"wgpy-demo-{lab.tag}-b"
    for ns in (a, b):
        lab.run("ip", "netns", "add", ns)
        lab.namespaces.append(ns)
        lab.run("ip", "link", "set", "lo", "up", ns=ns)
    peer = ("peer", "veth-wgpy", "netns", b)
    lab.run("ip", "link", "add", "veth-wgpy", "netns", a, "type", "veth", *peer)
    for ns, addr in zip((a, b), OUTER, strict=True):
        lab.run("ip", "addr", "add", f"{addr}/24", "dev", "veth-wgpy", ns=ns)
        lab.run("ip", "link", "set", "veth-wgpy", "up", ns=ns)
    return a, b


def _tunnel(lab: Lab, namespaces: tuple[str, str], ifaces: tuple[str, str]) -> None:
    """A wgpy daemon in each namespace, configured through its UAPI socket as
    `wg` would, each the other's peer."""
    keys = (PrivateKey.generate(), PrivateKey.generate())
    for i, (ns, iface) in enumerate(zip(namespaces, ifaces, strict=True)):
        _start_daemon(lab, ns, iface)
        other = 1 - i
        control.set_config(
            iface,
            [
                f"private_key={keys[i].to_bytes().hex()}",
                f"listen_port={PORTS[i]}",
                f"public_key={bytes(keys[other].public_key()).hex()}",
                f"endpoint={OUTER[other]}:{PORTS[other]}",
                f"allowed_ip={INNER[other]}/32",
            ],
        )
        lab.run("ip", "addr", "add", f"{INNER[i]}/24", "dev", iface, ns=ns)


def _measure(
    lab: Lab, namespaces: tuple[str, str], iface: str, started: float
) -> dict[str, object]:
    a, b = namespaces
    ping = lab.run("ping", "-c", "5", "-i", "0.2", "-W", "2", INNER[1], ns=a).stdout
    handshake_at = control.get_state(iface).peers[0].last_handshake
    rtt = re.search(r"= [\d.]+/([\d.]+)/", ping)
    loss = re.search(r"(\d+)% packet loss", ping)
    throughput = _throughput(lab, a, b)
    state = control.get_state(iface).peers[0]
    return {
        "handshake_seconds_after_start": (
            round(handshake_at - started, 3) if handshake_at else None
        ),
        "ping_avg_ms": float(rtt.group(1)) if rtt else None,
        "ping_loss_percent": int(loss.group(1)) if loss else None,
        "tcp_mbit_per_s": throughput,
        "peer_a_sees": {
            "endpoint": state.endpoint,
            "rx_bytes": state.rx_bytes,
            "tx_bytes": state.tx_bytes,
        },
    }


def _throughput(lab: Lab, a: str, b: str, seconds: float = 3.0) -> float:
    sink = subprocess.Popen(
        ["ip", "netns", "exec", b, sys.executable, "-c", SINK, INNER[1]],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        if sink.stdout.readline().strip() != "ready":
            raise DemoError("throughput sink did not start")
        lab.run(sys.executable, "-c", SOURCE, INNER[1], str(seconds), ns=a)
        total, elapsed = sink.stdout.readline().split()
        return round(int(total) * 8 / float(elapsed) / 1e6, 1)
    finally:
        sink.kill()
        sink.wait()


def main(*, as_json: bool = False) -> int:
    if shutil.which("ping") is None:
        print(
            "wgpy demo: the `ping` command is missing (apt-get install iputils-ping)",
            file=sys.stderr,
        )
        return 1
    try:
        result = run_demo()
    except DemoError as e:
        print(f"wgpy demo: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    ifaces, namespaces = result["interfaces"], result["namespaces"]
    print(f"tunnel {ifaces} between namespaces {namespaces}")
    print(f"handshake completed {result['handshake_seconds_after_start']} s after start")
    avg, loss = result["ping_avg_ms"], result["ping_loss_percent"]
    print(f"ping through the tunnel: avg {avg} ms, {loss}% loss")
    print(f"TCP throughput (one stream, 3 s): {result['tcp_mbit_per_s']} Mbit/s")
    print(f"peer as seen from the first side: {result['peer_a_sees']}")
    print("cleaned up: namespaces, interfaces and daemons removed")
    return 0

"""The TUN interface after the device started: moved to another namespace
(the "ready for containers" model) and with a raised MTU."""

from __future__ import annotations

from netns import NetnsLab, add_address, require_programs, require_tun
from wgnet import INNER_V4, WGPY, WIREGUARD_GO, make_pair


def test_interface_moved_to_another_namespace_keeps_working(netns_lab: NetnsLab) -> None:
    require_programs("wireguard-go", "wg", "ping")
    require_tun()
    pair = make_pair(netns_lab, WGPY, WIREGUARD_GO)
    container = netns_lab.namespace()
    # The UDP sockets stay in the namespace the daemon started in.
    pair.a.ns.ip("link", "set", pair.a.iface, "netns", container.name)
    netns_lab.links.append((container.name, pair.a.iface))
    add_address(container, pair.a.iface, f"{INNER_V4[0]}/24")
    container.ip("link", "set", pair.a.iface, "up")
    r = container.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", INNER_V4[1]], check=False)
    assert r.returncode == 0, r.stdout
    assert pair.b.peer_dump(pair.a.public_key).endpoint == f"10.77.0.1:{pair.a.port}"
    # The daemon is still managed through its UAPI socket.
    assert pair.a.peer_dump(pair.b.public_key).latest_handshake > 0


def test_raised_mtu_is_honoured(netns_lab: NetnsLab) -> None:
    require_programs("wg", "ping")
    require_tun()
    pair = make_pair(netns_lab, WGPY, WGPY)
    assert pair.a.ping(INNER_V4[1], count=1)
    for node in (pair.a, pair.b):
        node.ns.ip("link", "set", node.iface, "mtu", "65535")
    for size in (8000, 30000, 65000):
        r = pair.a.ns.run(
            ["ping", "-c", "2", "-W", "3", "-M", "do", "-s", str(size), INNER_V4[1]], check=False
        )
        assert r.returncode == 0, f"{size}-byte ping: {r.stdout}{r.stderr}"

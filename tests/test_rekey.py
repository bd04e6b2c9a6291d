"""Rekey after REKEY_AFTER_TIME, observed against wireguard-go with a real wait.

wgpy initiates; wireguard-go, as the responder, never rekeys on time, so a
second handshake at about 120 s can only be wgpy's. Traffic flows through it.
"""

from __future__ import annotations

import re
import time

from netns import NetnsLab, require_programs, require_tun
from wgnet import INNER_V4, WGPY, WIREGUARD_GO, make_pair


def test_initiator_rekeys_after_120_s_without_losing_traffic(netns_lab: NetnsLab) -> None:
    require_programs("wireguard-go", "wg", "ping")
    require_tun()
    pair = make_pair(netns_lab, WGPY, WIREGUARD_GO)
    assert pair.a.ping(INNER_V4[1], count=1)
    first = pair.b.peer_dump(pair.a.public_key).latest_handshake
    start = time.time()
    # 0.5 s pings for 135 s: traffic is flowing when the key reaches 120 s.
    out = pair.a.ns.run(
        ["ping", "-q", "-i", "0.5", "-c", "270", "-W", "1", INNER_V4[1]], check=False, timeout=200
    ).stdout
    second = pair.b.peer_dump(pair.a.public_key).latest_handshake
    received = int(re.search(r"(\d+) received", out).group(1))  # type: ignore[union-attr]
    assert second > first, "a new handshake happened"
    assert 115 <= second - first <= 135, f"rekey after {second - first} s"
    assert second < start + 140
    assert received >= 269, out

"""Under load: a flood of initiations with valid mac1 makes wgpy answer with
cookie replies, while a legitimate peer still completes its handshake."""

from __future__ import annotations

import time

from flood import flood_result, start_flood
from netns import NetnsLab, require_programs, require_tun
from wgnet import INNER_V4, WGPY, WIREGUARD_GO, make_pair


def test_cookie_replies_under_flood_and_legitimate_handshake_completes(
    netns_lab: NetnsLab,
) -> None:
    require_programs("wireguard-go", "wg", "ping")
    require_tun()
    lab = netns_lab
    pair = make_pair(lab, WIREGUARD_GO, WGPY)  # wireguard-go (a) initiates to wgpy (b)
    attacker = lab.namespace()
    lab.veth(attacker, pair.b.ns, ["10.78.0.1/24"], ["10.78.0.2/24"])
    flood = start_flood(
        attacker,
        pair.b.public_key,
        ("10.78.0.2", pair.b.port),
        source="10.78.0.1",
        limit=2_000_000,
        seconds=12,
    )
    time.sleep(1.5)  # let the backlog build up before the legitimate peer starts
    assert flood.alive(), flood.log()
    # wireguard-go gets a cookie reply first and retries with mac2 after REKEY_TIMEOUT.
    assert pair.a.ping(INNER_V4[1], count=1, timeout=15)
    handshake_at = pair.a.peer_dump(pair.b.public_key).latest_handshake
    flood.popen.wait(timeout=30)
    result = flood_result(flood)
    assert result["cookie_replies"] > 0, result
    assert handshake_at > 0
    assert handshake_at <= result["ended"] + 1, "the handshake completed during the flood"

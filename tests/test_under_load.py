"""Under load: a flood of initiations with valid mac1 makes wgpy answer with
cookie replies, while a legitimate peer still completes its handshake."""

from __future__ import annotations

import json
import sys
import time

from netns import NetnsLab, require_programs, require_tun
from wgnet import INNER_V4, WGPY, WIREGUARD_GO, make_pair

FLOOD = r"""
import json, socket, sys, time
import wgpy
target = wgpy.PublicKey.from_base64(sys.argv[1])
host, port, limit, seconds = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
# Valid mac1 (it only needs the target's public key), unknown static keys.
keys = [wgpy.PrivateKey.generate() for _ in range(256)]
messages = [wgpy.Handshake(k, target).create_initiation() for k in keys]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[6], 0)); s.setblocking(False)
sent = cookies = 0
start = time.monotonic(); end = start + seconds
print(json.dumps({"started": time.time()}), flush=True)
while sent < limit and time.monotonic() < end:
    for m in messages:
        try:
            s.sendto(m, (host, port)); sent += 1
        except BlockingIOError:
            pass
    while True:
        try:
            d = s.recv(2048)
        except BlockingIOError:
            break
        if len(d) == 64 and d[0] == 3:
            cookies += 1
    time.sleep(0.002)  # about 100k initiations/s: well over what is processed
print(json.dumps({"sent": sent, "cookie_replies": cookies, "ended": time.time()}), flush=True)
"""


def test_cookie_replies_under_flood_and_legitimate_handshake_completes(
    netns_lab: NetnsLab,
) -> None:
    require_programs("wireguard-go", "wg", "ping")
    require_tun()
    lab = netns_lab
    pair = make_pair(lab, WIREGUARD_GO, WGPY)  # wireguard-go (a) initiates to wgpy (b)
    attacker = lab.namespace()
    lab.veth(attacker, pair.b.ns, ["10.78.0.1/24"], ["10.78.0.2/24"])
    flood = attacker.spawn(
        [
            sys.executable,
            "-c",
            FLOOD,
            pair.b.public_key.to_base64(),
            "10.78.0.2",
            str(pair.b.port),
            "2000000",
            "12",
            "10.78.0.1",
        ]
    )
    time.sleep(1.5)  # let the backlog build up before the legitimate peer starts
    assert flood.alive(), flood.log()
    # wireguard-go gets a cookie reply first and retries with mac2 after REKEY_TIMEOUT.
    assert pair.a.ping(INNER_V4[1], count=1, timeout=15)
    handshake_at = pair.a.peer_dump(pair.b.public_key).latest_handshake
    flood.popen.wait(timeout=30)
    lines = [json.loads(line) for line in flood.log().splitlines() if line.startswith("{")]
    result = lines[-1]
    assert result["cookie_replies"] > 0, result
    assert handshake_at > 0
    assert handshake_at <= result["ended"] + 1, "the handshake completed during the flood"

"""A bounded flood of handshake initiations with a valid mac1 (so the target does
the work of a real one) from unknown static keys: it puts the target under load,
so that it answers initiations without a valid mac2 with cookie replies."""

from __future__ import annotations

import json
import sys

import wgpy
from netns import BackgroundProcess, Namespace

FLOOD = r"""
import json, socket, sys, time
import wgpy
target = wgpy.PublicKey.from_base64(sys.argv[1])
host, port, limit, seconds = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
# Valid mac1 (it only needs the target's public key), unknown static keys.
keys = [wgpy.PrivateKey.generate() for _ in range(256)]
messages = [wgpy.Handshake(k, target).create_initiation() for k in keys]
if sys.argv[8] == "bad-mac1":
    messages = [m[:116] + bytes([m[116] ^ 1]) + m[117:] for m in messages]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[6], 0)); s.setblocking(False)
sent = cookies = 0
start = time.monotonic(); end = start + seconds
print(json.dumps({"started": time.time()}), flush=True)
rate = float(sys.argv[7])  # per second; 0: about 100k/s; -1: no pause at all
while sent < limit and time.monotonic() < end:
    burst = messages if rate <= 0 else messages[: max(1, int(rate / 100))]
    for m in burst:
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
    if rate > 0:
        time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    elif rate == 0:
        time.sleep(0.002)  # about 100k initiations/s: well over what is processed
print(json.dumps({"sent": sent, "cookie_replies": cookies, "ended": time.time()}), flush=True)
"""


def start_flood(
    ns: Namespace,
    target: wgpy.PublicKey,
    address: tuple[str, int],
    *,
    source: str,
    limit: int,
    seconds: float,
    rate: float = 0.0,
    bad_mac1: bool = False,
) -> BackgroundProcess:
    """Floods `address` from `source` (an IPv4 address in `ns`) for at most `limit`
    packets and `seconds`, at `rate` packets/s (0: about 100,000/s, -1: as fast
    as it can); with `bad_mac1` every initiation's mac1 is wrong. The output's
    first line is {"started": unix time}."""
    host, port = address
    argv = [sys.executable, "-c", FLOOD, target.to_base64(), host, str(port)]
    mode = "bad-mac1" if bad_mac1 else "valid"
    return ns.spawn([*argv, str(limit), str(seconds), source, str(rate), mode])


def flood_result(flood: BackgroundProcess) -> dict:
    """{"sent", "cookie_replies", "ended"} of a finished flood."""
    lines = [json.loads(line) for line in flood.log().splitlines() if line.startswith("{")]
    if not lines or "sent" not in lines[-1]:
        raise AssertionError(f"the flood did not finish: {flood.log()[-2000:]}")
    return lines[-1]

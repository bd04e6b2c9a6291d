"""A UDP probe stream for handover measurements, run as a script in a namespace.

    handover_probe.py send HOST PORT RATE SECONDS
        sends RATE packets per second for SECONDS: each carries a sequence
        number and its send time (CLOCK_MONOTONIC, which every network
        namespace shares), padded to 64 bytes.
    handover_probe.py recv ADDRESS PORT SECONDS
        receives for SECONDS and prints a line "SEQ SENT ARRIVED" for each
        packet as it arrives (flushed at once, so it can be read live).

Both stop early on SIGTERM. The receiver prints "ready" once bound. A send
that fails (no route while the underlay changes) is skipped: the sequence
number is still used, so the receiver sees it as lost.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import time

PACKET = struct.Struct("!Id")
SIZE = 64


class Stop(Exception):
    """SIGTERM arrived."""


def _stop(_signum: int, _frame: object) -> None:
    raise Stop


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def send(host: str, port: int, rate: float, seconds: float) -> None:
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    interval = 1.0 / rate
    start = time.monotonic()
    seq = 0
    try:
        while True:
            due = start + seq * interval
            now = time.monotonic()
            if now - start >= seconds:
                break
            if due > now:
                time.sleep(due - now)
            payload = PACKET.pack(seq, time.monotonic()).ljust(SIZE, b"\0")
            try:
                s.sendto(payload, (host, port))
            except OSError:
                pass  # no route for now: this one is lost
            seq += 1
    except Stop:
        pass
    print(json.dumps({"sent": seq}), flush=True)


def recv(address: str, port: int, seconds: float) -> None:
    s = socket.socket(family(address), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((address, port))
    print("ready", flush=True)
    end = time.monotonic() + seconds
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data = s.recv(2048)
            except TimeoutError:
                break
            now = time.monotonic()
            if len(data) >= PACKET.size:
                seq, sent = PACKET.unpack_from(data)
                print(f"{seq} {sent:.6f} {now:.6f}", flush=True)
    except Stop:
        pass


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _stop)
    if len(argv) == 5 and argv[0] == "send":
        send(argv[1], int(argv[2]), float(argv[3]), float(argv[4]))
    elif len(argv) == 4 and argv[0] == "recv":
        recv(argv[1], int(argv[2]), float(argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

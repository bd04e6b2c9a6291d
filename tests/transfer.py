"""A TCP transfer between two namespaces whose content is checked by SHA-256
on both ends, and a long-running stream used to measure stalls."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from netns import BackgroundProcess, Namespace, wait_until

RECEIVER = r"""
import hashlib, json, socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
s.settimeout(float(sys.argv[3]))
c, _ = s.accept(); c.settimeout(float(sys.argv[3]))
h = hashlib.sha256(); n = 0; last = time.monotonic(); longest = 0.0
while True:
    d = c.recv(1 << 20)
    now = time.monotonic(); longest = max(longest, now - last); last = now
    if not d:
        break
    h.update(d); n += len(d)
print(json.dumps({"bytes": n, "sha256": h.hexdigest(), "longest_gap": longest}), flush=True)
"""

SENDER = r"""
import hashlib, json, socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
total = int(sys.argv[3]); pace = float(sys.argv[4])
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
h = hashlib.sha256(); sent = 0; block = hashlib.sha256(b"seed").digest() * 2048
i = 0
t0 = time.monotonic()
while sent < total:
    chunk = hashlib.sha256(i.to_bytes(8, "little")).digest() + block
    chunk = chunk[: min(len(chunk), total - sent)]
    c.sendall(chunk); h.update(chunk); sent += len(chunk); i += 1
    if pace:
        time.sleep(pace)
c.close()
elapsed = time.monotonic() - t0
print(json.dumps({"bytes": sent, "sha256": h.hexdigest(), "seconds": elapsed}), flush=True)
"""


@dataclass(frozen=True)
class TransferResult:
    sent_bytes: int
    received_bytes: int
    sent_sha256: str
    received_sha256: str
    seconds: float
    longest_gap: float


@dataclass
class TransferJob:
    """A transfer running in the background; `finish()` waits and checks it."""

    receiver: BackgroundProcess
    sender: BackgroundProcess
    timeout: float

    def finish(self) -> TransferResult:
        self.sender.popen.wait(timeout=self.timeout)
        self.receiver.popen.wait(timeout=30)
        sent = last_json(self.sender)
        got = last_json(self.receiver)
        return TransferResult(
            sent["bytes"],
            got["bytes"],
            sent["sha256"],
            got["sha256"],
            sent["seconds"],
            got["longest_gap"],
        )


def start_receiver(
    ns: Namespace, address: str, *, port: int = 5201, timeout: float = 120.0
) -> BackgroundProcess:
    """A receiver bound to `address:port` in `ns`, listening when this returns; its
    last output line is JSON with `bytes`, `sha256` and `longest_gap`."""
    rx = ns.spawn([sys.executable, "-c", RECEIVER, address, str(port), str(timeout)])
    wait_until(lambda: _listening(ns, port), timeout=10, what="receiver listening")
    return rx


def start_sender(
    ns: Namespace, address: str, total: int, *, port: int = 5201, pace: float = 0.0
) -> BackgroundProcess:
    """A sender of `total` bytes to `address:port` from `ns`; its last output line is
    JSON with `bytes`, `sha256` and `seconds`."""
    return ns.spawn([sys.executable, "-c", SENDER, address, str(port), str(total), str(pace)])


def last_json(process: BackgroundProcess) -> dict:
    """The last line of a finished helper's output, parsed."""
    lines = process.log().strip().splitlines()
    if not lines:
        raise AssertionError(f"{process.argv[:3]} printed nothing (exit {process.popen.poll()})")
    return json.loads(lines[-1])


def start_tcp_transfer(
    sender: Namespace,
    receiver: Namespace,
    address: str,
    total: int,
    *,
    port: int = 5201,
    pace: float = 0.0,
    timeout: float = 120.0,
) -> TransferJob:
    rx = start_receiver(receiver, address, port=port, timeout=timeout)
    tx = start_sender(sender, address, total, port=port, pace=pace)
    return TransferJob(rx, tx, timeout)


def tcp_transfer(
    sender: Namespace,
    receiver: Namespace,
    address: str,
    total: int,
    *,
    port: int = 5201,
    pace: float = 0.0,
    timeout: float = 120.0,
) -> TransferResult:
    job = start_tcp_transfer(
        sender, receiver, address, total, port=port, pace=pace, timeout=timeout
    )
    return job.finish()


def _listening(ns: Namespace, port: int) -> bool:
    out = ns.run(["ss", "-H", "-t", "-l", "-n", f"sport = :{port}"], check=False)
    return out.returncode == 0 and out.stdout.strip() != ""

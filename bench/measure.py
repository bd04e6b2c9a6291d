"""Single measurements on a built configuration: iperf3 TCP and UDP runs,
ping round trips, and the first-packet probe. Each returns plain data; the
repetition, interleaving and busy checks are the caller's (bench.run).

Units: Gbit/s and GB are decimal (1e9); packet rates are packets per second.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from netns import BackgroundProcess, Namespace, wait_until

from bench import cpu
from bench.topology import Setup

IPERF_PORT = 5201
PROBE_PORT = 9009
GIGA = 1e9


class MeasurementError(RuntimeError):
    """A measurement could not be made (a tool failed, a daemon died)."""


@dataclass(frozen=True)
class Finished:
    """A tool run to completion, with the CPU time it used itself."""

    output: str
    returncode: int
    cpu_seconds: float


def poll_tracked(process: BackgroundProcess) -> Finished | None:
    """If `process` (started by NetnsLab.spawn) has exited, reap it and return
    its output and own CPU time; else None. Use this, not `alive()`, on
    processes whose CPU is wanted.

    wait4(2) returns the child's rusage, which /proc cannot give once it has
    exited. `ip netns exec` execs the command, so the child is the tool itself.
    """
    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
    if not pid:
        return None
    code = os.waitstatus_to_exitcode(status)
    process.popen.returncode = code  # reaped here, so Popen must not wait for it again
    return Finished(process.log(), code, usage.ru_utime + usage.ru_stime)


def finish_tracked(process: BackgroundProcess, timeout: float) -> Finished:
    """Wait up to `timeout` s for `process` to exit (see poll_tracked)."""
    deadline = time.monotonic() + timeout
    while (done := poll_tracked(process)) is None:
        if time.monotonic() > deadline:
            process.stop()
            raise MeasurementError(f"{' '.join(process.argv)} did not finish in {timeout:.0f} s")
        time.sleep(0.02)
    return done


def run_tracked(ns: Namespace, argv: list[str], timeout: float) -> Finished:
    return finish_tracked(ns.spawn(argv), timeout)


# --- iperf3 -------------------------------------------------------------------


def start_iperf_server(setup: Setup) -> BackgroundProcess:
    server = setup.server.spawn(["iperf3", "-s", "-B", setup.address, "-p", str(IPERF_PORT)])

    def listening() -> bool:
        if not server.alive():
            raise MeasurementError(f"iperf3 server exited:\n{server.log()}")
        out = setup.server.run(["ss", "-H", "-t", "-l", "-n", f"sport = :{IPERF_PORT}"])
        return out.stdout.strip() != ""

    wait_until(listening, timeout=10, what="iperf3 server listening")
    return server


def iperf_argv(setup: Setup, duration: int, extra: list[str]) -> list[str]:
    return [
        "iperf3",
        "-c",
        setup.address,
        "-p",
        str(IPERF_PORT),
        "-J",
        "-t",
        str(duration),
        "--connect-timeout",
        "5000",
        *extra,
    ]


def parse_iperf(output: str) -> dict[str, Any]:
    """The JSON document iperf3 -J printed (ignoring anything around it)."""
    start, end = output.find("{"), output.rfind("}")
    if start < 0 or end < start:
        raise MeasurementError(f"iperf3 printed no JSON:\n{output[-2000:]}")
    data: dict[str, Any] = json.loads(output[start : end + 1])
    if "error" in data:
        raise MeasurementError(f"iperf3: {data['error']}")
    return data


@dataclass
class Throughput:
    """A TCP run: what arrived, and the CPU each party used for it."""

    gbps: float
    received_bytes: int
    seconds: float
    retransmits: int | None
    cpu: dict[str, float]  # role -> CPU seconds during the run (see cpu_per_gb)
    threads: dict[str, dict[str, float]] = field(default_factory=dict)

    def cpu_per_gb(self) -> dict[str, float]:
        """CPU seconds per GB received, per role and for groups of roles:
        `daemons` = sender + receiver WireGuard processes, `iperf3` = client +
        server, `machine` = all cores' busy time from /proc/stat."""
        gb = self.received_bytes / GIGA
        if gb <= 0:
            return {}
        per = {role: seconds / gb for role, seconds in self.cpu.items()}
        if "sender" in self.cpu and "receiver" in self.cpu:
            per["daemons"] = (self.cpu["sender"] + self.cpu["receiver"]) / gb
        if "iperf3_client" in self.cpu and "iperf3_server" in self.cpu:
            per["iperf3"] = (self.cpu["iperf3_client"] + self.cpu["iperf3_server"]) / gb
        return per


def tracked_pids(setup: Setup, server: BackgroundProcess) -> dict[str, int]:
    return {**setup.daemons, "iperf3_server": server.pid}


def tcp(
    setup: Setup, server: BackgroundProcess, streams: int, duration: int, threads: bool = False
) -> Throughput:
    """iperf3 TCP from side a to side b with `streams` parallel connections."""
    pids = tracked_pids(setup, server)
    before = cpu.sample_cpu(pids, threads=threads)
    done = run_tracked(
        setup.client, iperf_argv(setup, duration, ["-P", str(streams)]), duration + 30
    )
    after = cpu.sample_cpu(pids, threads=threads)
    check_daemons(setup)
    data = parse_iperf(done.output)
    received = data["end"]["sum_received"]
    used = cpu.cpu_seconds(before, after)
    used["iperf3_client"] = done.cpu_seconds
    return Throughput(
        gbps=received["bits_per_second"] / GIGA,
        received_bytes=int(received["bytes"]),
        seconds=float(received["seconds"]),
        retransmits=data["end"].get("sum_sent", {}).get("retransmits"),
        cpu=used,
        threads=cpu.thread_seconds(before, after) if threads else {},
    )


@dataclass
class Datagrams:
    """A UDP run: packets sent and delivered, at a requested rate (0 = unlimited)."""

    rate_bps: int
    length: int  # UDP payload bytes
    sent_pps: float
    delivered_pps: float
    loss_percent: float  # of the packets the client sent, those that never arrived
    # Where packets went (see link_counters): datagrams that reached side b's
    # kernel, and packets side a's TUN (or veth) queue dropped because they
    # were not read fast enough.
    link_delivered_pps: float | None = None
    sender_queue_drops: int | None = None


def udp(setup: Setup, length: int, rate_bps: int, duration: int) -> Datagrams:
    """iperf3 UDP from side a to side b with `length`-byte payloads."""
    extra = ["-u", "-b", str(rate_bps), "-l", str(length)]
    links_before = link_counters(setup, length)
    done = run_tracked(setup.client, iperf_argv(setup, duration, extra), duration + 30)
    links_after = link_counters(setup, length)
    check_daemons(setup)
    end = parse_iperf(done.output)["end"]
    sent, received = end["sum_sent"], end["sum_received"]
    # iperf3's own lost_percent is relative to the highest sequence number the
    # server saw, so it misses packets lost at the end; count from the sender.
    delivered = int(received["packets"]) - int(received["lost_packets"])
    sent_packets = int(sent["packets"])
    loss = 100.0 * (1 - delivered / sent_packets) if sent_packets else 100.0
    return Datagrams(
        rate_bps=rate_bps,
        length=length,
        sent_pps=sent_packets / float(sent["seconds"]),
        delivered_pps=delivered / float(received["seconds"]),
        loss_percent=max(0.0, loss),
        link_delivered_pps=(links_after[1] - links_before[1]) / float(received["seconds"]),
        sender_queue_drops=links_after[0] - links_before[0],
    )


def link_counters(setup: Setup, length: int) -> tuple[int, int]:
    """(tx packets dropped on side a's link, datagrams of `length` payload
    bytes that reached side b's kernel over its link).

    The second comes from the rx counters of b's TUN device (the packets the
    receiving daemon wrote into it) or, without a tunnel, of b's veth end. A
    UDP GSO write of many datagrams counts once in `packets` but carries one
    IPv4+UDP header for all of them, so the datagrams are (bytes - headers *
    packets) / length, exact whether or not the daemon coalesced (iperf3's
    few control packets aside). iperf3's own count is what the server
    application then read from its socket: a difference shows an application
    (or its socket buffer) too slow for the rate the tunnel delivers, as
    opposed to a tunnel that delivers too little."""
    a = json.loads(setup.client.ip("-j", "-s", "link", "show", "dev", setup.sender_link).stdout)
    b = json.loads(setup.server.ip("-j", "-s", "link", "show", "dev", setup.receiver_link).stdout)
    rx = b[0]["stats64"]["rx"]
    headers = IPV4_UDP_HEADERS + (0 if setup.pair is not None else ETHERNET_HEADER)
    datagrams = (int(rx["bytes"]) - headers * int(rx["packets"])) // length
    return int(a[0]["stats64"]["tx"]["dropped"]), datagrams


IPV4_UDP_HEADERS = 28
ETHERNET_HEADER = 14
SEARCH_FRACTIONS = (1.0, 0.8, 0.6, 0.4, 0.2)


def search_rates(ceiling_pps: float, length: int) -> list[int]:
    """Offered rates (bit/s of UDP payload) to try, highest first: fractions of
    the rate delivered when sending without limit."""
    return [max(1, int(ceiling_pps * f * length * 8)) for f in SEARCH_FRACTIONS]


def sustainable(probes: list[Datagrams], max_loss_percent: float = 1.0) -> Datagrams | None:
    """The highest-rate probe that lost less than `max_loss_percent`, if any."""
    good = [p for p in probes if p.loss_percent < max_loss_percent]
    return max(good, key=lambda p: p.rate_bps, default=None)


def udp_search(
    setup: Setup, length: int, ceiling_pps: float, duration: int, max_loss_percent: float = 1.0
) -> tuple[Datagrams | None, list[Datagrams]]:
    """Try rates from the unlimited run's delivered rate downwards; stop at the
    first one that loses under `max_loss_percent`."""
    probes: list[Datagrams] = []
    for rate in search_rates(ceiling_pps, length):
        probe = udp(setup, length, rate, duration)
        probes.append(probe)
        if probe.loss_percent < max_loss_percent:
            break
    return sustainable(probes, max_loss_percent), probes


# --- latency ------------------------------------------------------------------

RTT = re.compile(r"time=([0-9.]+) ms")


@dataclass
class RoundTrips:
    sent: int
    rtts_ms: list[float]
    load_gbps: float | None = None  # throughput of the TCP stream running meanwhile


def parse_ping(output: str) -> list[float]:
    return [float(m.group(1)) for m in RTT.finditer(output)]


def ping(setup: Setup, count: int, interval: float = 0.01) -> RoundTrips:
    """`count` pings from a to b, `interval` s apart (root may go below 0.2 s)."""
    argv = ["ping", "-n", "-i", str(interval), "-c", str(count), "-W", "1", setup.address]
    result = setup.client.run(argv, check=False, timeout=count * interval + 15)
    return RoundTrips(count, parse_ping(result.stdout))


def ping_under_load(
    setup: Setup, server: BackgroundProcess, duration: int, interval: float = 0.01
) -> RoundTrips:
    """Pings while one TCP stream saturates the path; pinging starts after 1 s
    (the stream has ramped up) and ends about 1 s before the stream does."""
    load = setup.client.spawn(iperf_argv(setup, duration, []))
    try:
        time.sleep(1.0)
        count = max(50, int((duration - 2) / interval))
        trips = ping(setup, count, interval)
    finally:
        done = finish_tracked(load, duration + 30)
    check_daemons(setup)
    trips.load_gbps = parse_iperf(done.output)["end"]["sum_received"]["bits_per_second"] / GIGA
    return trips


@dataclass
class FirstPacket:
    """Time from handing the first datagram to side a's kernel to its arrival
    on side b, through a tunnel with no session yet (handshake included)."""

    ms: float
    delivered_seq: int  # 0 if the very first datagram arrived; else it was dropped
    sent: int


def first_packet(setup: Setup, timeout: float = 10.0, resend: float = 0.25) -> FirstPacket:
    """Send numbered datagrams every `resend` s until one arrives; both sockets
    belong to this process, so one monotonic clock times both ends."""
    receiver = setup.server.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = setup.client.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind((setup.address, PROBE_PORT))
        receiver.settimeout(resend)
        sent = 0
        start = time.perf_counter()
        while True:
            sender.sendto(sent.to_bytes(4, "big"), (setup.address, PROBE_PORT))
            sent += 1
            try:
                data = receiver.recv(64)
            except TimeoutError:
                if time.perf_counter() - start > timeout:
                    raise MeasurementError(
                        f"no probe datagram arrived within {timeout:.0f} s"
                    ) from None
                continue
            arrived = time.perf_counter()
            return FirstPacket((arrived - start) * 1e3, int.from_bytes(data[:4], "big"), sent)
    finally:
        receiver.close()
        sender.close()


def check_daemons(setup: Setup) -> None:
    """Fail the measurement if a WireGuard daemon died during it."""
    if setup.pair is None:
        return
    for node in (setup.pair.a, setup.pair.b):
        if not node.process.alive():
            raise MeasurementError(f"{node.impl} ({node.iface}) exited:\n{node.process.log()}")

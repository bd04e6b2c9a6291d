"""Rootless mode end to end: `wgpy proxy` and `wgpy forward` run as user
nobody, with no capabilities, in a namespace of their own; the far side is
wireguard-go in another (the kernel module: test_kernel_interop.py).

curl fetches 100 MB through SOCKS5 (names resolved remotely) and HTTP
CONNECT with equal SHA-256; a far-side name resolves through the tunnel;
1,000 concurrent connections each exchange data through a forward; UDP goes
through a forward; a tunnel port forwards back to a local service; and the
tunnel survives the client's address changing (roaming and handover).
"""

from __future__ import annotations

import hashlib
import socket
import sys

import pytest
import trio
from netns import NetnsLab, require_programs, require_tun, wait_until
from rootless_lab import (
    FAR_NAME,
    RootlessLab,
    http_root,
    rootless_lab,
    serve_dns,
    serve_echo,
    serve_http,
)
from wgnet import INNER_V4, OUTER_V4
from wgpy import dns

SIZE = 100 << 20


@pytest.fixture
def rl(netns_lab: NetnsLab) -> RootlessLab:
    require_programs("wireguard-go", "wg", "curl", "setpriv")
    require_tun()
    with rootless_lab(netns_lab) as lab:
        yield lab  # type: ignore[misc]


def curl_sha256(lab: RootlessLab, *args: str) -> str:
    out = lab.client_ns.run(
        ["bash", "-c", "curl -sS --fail --max-time 120 " + " ".join(args) + " | sha256sum"],
        timeout=150,
    )
    return out.stdout.split()[0]


def test_proxy_as_nobody_socks5h_and_http_connect_100mb(rl: RootlessLab) -> None:
    root = http_root(rl, SIZE)
    expected = hashlib.sha256((root / "blob").read_bytes()).hexdigest()
    serve_http(rl, root)
    serve_dns(rl)
    proxy = rl.run_as_nobody("proxy", "--socks5", "127.0.0.1:1080", "--http", "127.0.0.1:8080")
    assert "SOCKS5 on 127.0.0.1:1080 and HTTP on 127.0.0.1:8080" in proxy.log()
    status = open(f"/proc/{proxy.pid}/status").read()
    assert "\nUid:\t65534" in status and "\nCapEff:\t0000000000000000" in status
    url = f"http://{INNER_V4[0]}:8000/blob"
    assert curl_sha256(rl, "--socks5-hostname", "127.0.0.1:1080", url) == expected
    assert curl_sha256(rl, "--proxytunnel", "--proxy", "http://127.0.0.1:8080", url) == expected
    # A name only the far side's DNS knows, resolved through the tunnel (socks5h and HTTP).
    for how in (
        "--socks5-hostname 127.0.0.1:1080",
        "--proxytunnel --proxy http://127.0.0.1:8080",
        "--proxy http://127.0.0.1:8080",
    ):
        out = rl.client_ns.run(
            ["bash", "-c", f"curl -sS --fail --max-time 20 {how} http://{FAR_NAME}:8000/small"]
        )
        assert out.stdout == "hello through the tunnel\n", how
    proxy.stop()
    assert proxy.popen.returncode == 0, proxy.log()


async def _many_connections(count: int) -> int:
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        stream = await trio.open_tcp_stream("127.0.0.1", 9007)
        async with stream:
            message = b"%d\n" % i
            await stream.send_all(message)
            got = b""
            while len(got) < len(message):
                got += await stream.receive_some(64)
            assert got == message
            ok += 1

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
    return ok


def test_forward_as_nobody_1000_connections_udp_and_reverse(rl: RootlessLab) -> None:
    serve_echo(rl)
    serve_dns(rl)
    local = rl.client_ns.spawn([sys.executable, "-c", LOCAL_SERVICE])
    wait_until(lambda: "ready" in local.log(), timeout=10, what="local service")
    forward = rl.run_as_nobody(
        "forward",
        "--tcp",
        "127.0.0.1:9007=10.200.0.1:7",
        "--udp",
        "127.0.0.1:9053=10.200.0.1:53",
        "--remote-tcp",
        "8081=127.0.0.1:7001",
    )
    with rl.client_ns.entered():
        assert trio.run(_many_connections, 1000) == 1000
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        udp.settimeout(5)
        udp.sendto(dns.encode_query(0x1234, FAR_NAME, dns.A), ("127.0.0.1", 9053))
        assert dns.parse_answer(udp.recv(512), 0x1234, dns.A) == (0, [INNER_V4[0]])
    # The reverse direction: the far side reaches a local service through tunnel port 8081.
    out = rl.far_ns.run(["curl", "-sS", "--max-time", "10", "http://10.200.0.2:8081/"])
    assert out.stdout == "local service\n"
    forward.stop()
    assert forward.popen.returncode == 0, forward.log()


LOCAL_SERVICE = """
import http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"local service\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
server = http.server.HTTPServer(("127.0.0.1", 7001), H)
print("ready", flush=True)
server.serve_forever()
"""


def test_roaming_and_handover_as_nobody(rl: RootlessLab) -> None:
    """The client's address changes under it: the next packets leave from the
    new one (handover re-announces at once) and the far side's endpoint
    follows (roaming); the proxy keeps working."""
    root = http_root(rl, 1 << 20)
    serve_http(rl, root)
    rl.run_as_nobody("proxy", "--socks5", "127.0.0.1:1080")
    fetch = [
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "20",
        "--socks5",
        "127.0.0.1:1080",
        f"http://{INNER_V4[0]}:8000/small",
    ]
    assert rl.client_ns.run(fetch).stdout == "hello through the tunnel\n"
    assert rl.far.peer_dump(rl.client_key.public_key()).endpoint.startswith(OUTER_V4[1] + ":")
    veth = rl.client_ns.run(["ip", "-o", "-4", "addr", "show"]).stdout
    ifname = next(line.split()[1] for line in veth.splitlines() if OUTER_V4[1] in line)
    # The old address goes (handover holds the packets: no path), then the new one comes.
    rl.client_ns.ip("addr", "del", f"{OUTER_V4[1]}/24", "dev", ifname)
    rl.client_ns.ip("addr", "add", "10.77.0.3/24", "dev", ifname)
    wait_until(
        lambda: rl.far.peer_dump(rl.client_key.public_key()).endpoint.startswith("10.77.0.3:"),
        timeout=10,
        what="the far side's endpoint to follow the client's new address",
    )
    assert rl.client_ns.run(fetch).stdout == "hello through the tunnel\n"

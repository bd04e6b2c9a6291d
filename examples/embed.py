"""Embedding wgpy in a Trio program: a Device, a peer, and its events.

The device's peer here is played by this same program through wgpy's
sans-I/O API over a loopback UDP socket: it handshakes, sends an ICMP echo
request into the tunnel and decrypts the kernel's reply. Run it as root in a
network namespace of its own, so nothing touches the host's network:

    ip netns add wgpy-example
    ip -n wgpy-example link set lo up
    ip netns exec wgpy-example python3 examples/embed.py
    ip netns del wgpy-example
"""

from __future__ import annotations

import ipaddress
import struct

import trio
import wgpy

DEVICE_ADDRESS = "10.123.0.1"
PEER_ADDRESS = "10.123.0.2"


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(src: str, dst: str, ident: int, seq: int, payload: bytes) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(icmp),
        0,
        0,
        64,
        1,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + icmp


async def main() -> None:
    device_key = wgpy.PrivateKey.generate()
    peer_key = wgpy.PrivateKey.generate()
    async with wgpy.Device("wgpyex0", private_key=device_key) as device:
        device.tun.add_address(ipaddress.ip_interface(f"{DEVICE_ADDRESS}/24"))
        events = device.subscribe()

        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        await device.add_peer(
            peer_key.public_key(),
            endpoint=sock.getsockname(),
            allowed_ips=[f"{PEER_ADDRESS}/32"],
        )
        print(f"device {device.name} listening on UDP port {device.listen_port}")

        # The peer's side, with the sans-I/O API.
        handshake = wgpy.Handshake(peer_key, device_key.public_key())
        await sock.sendto(handshake.create_initiation(), ("127.0.0.1", device.listen_port))
        session = handshake.consume_response(await sock.recv(2048))
        print(f"peer: handshake done, session {session!r}")

        packet = echo_request(PEER_ADDRESS, DEVICE_ADDRESS, 7, 1, b"hello through wgpy")
        await sock.sendto(session.encrypt(packet), ("127.0.0.1", device.listen_port))

        with trio.fail_after(5):
            event = await events.receive()
            print(f"device event: {event.kind} with {event.peer}")
            while True:
                plain = session.decrypt(await sock.recv(65536))
                if plain:  # skip keepalives
                    break
        reply = plain[: wgpy.inner_packet_len(plain)]
        print(f"peer: got {len(reply)}-byte reply, ICMP type {reply[20]} (0 = echo reply)")
        for stats in device.stats():
            print(f"device sees {stats.public_key}: rx {stats.rx_bytes} B, tx {stats.tx_bytes} B")


if __name__ == "__main__":
    trio.run(main)

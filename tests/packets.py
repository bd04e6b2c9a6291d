"""Build and parse the inner IP packets tests send through a tunnel.

Only what the tests need: IPv4 and IPv6 headers (no options or extension
headers) and ICMP / ICMPv6 echo messages, with real checksums, so that a real
kernel on the far side accepts and answers them. Parsers check every checksum
and length and raise ValueError on anything malformed.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

PROTO_ICMP = 1
PROTO_ICMPV6 = 58
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum of 16-bit words, complemented."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_packet(
    src: str, dst: str, protocol: int, payload: bytes, *, ttl: int = 64, ident: int = 0
) -> bytes:
    """An IPv4 packet with a 20-byte header, DF set and a correct header checksum."""
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,  # version 4, IHL 5
        0,
        IPV4_HEADER_LEN + len(payload),
        ident,
        0x4000,  # don't fragment
        ttl,
        protocol,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    checksum = internet_checksum(header)
    return header[:10] + struct.pack("!H", checksum) + header[12:] + payload


def ipv6_packet(
    src: str, dst: str, next_header: int, payload: bytes, *, hop_limit: int = 64
) -> bytes:
    """An IPv6 packet with no extension headers."""
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(payload),
        next_header,
        hop_limit,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return header + payload


def _icmpv6_pseudo_header(src: IPAddress, dst: IPAddress, length: int) -> bytes:
    return src.packed + dst.packed + struct.pack("!IxxxB", length, PROTO_ICMPV6)


def icmp_echo(
    kind: int, ident: int, seq: int, payload: bytes, *, v6_addresses: tuple[str, str] | None = None
) -> bytes:
    """An ICMP (or, given `v6_addresses=(src, dst)`, ICMPv6) echo message."""
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload
    pseudo = b""
    if v6_addresses is not None:
        src, dst = (ipaddress.IPv6Address(a) for a in v6_addresses)
        pseudo = _icmpv6_pseudo_header(src, dst, len(body))
    checksum = internet_checksum(pseudo + body)
    return body[:2] + struct.pack("!H", checksum) + body[4:]


def echo_request(src: str, dst: str, ident: int, seq: int, payload: bytes) -> bytes:
    """A whole IPv4 or IPv6 packet carrying an echo request, by address family."""
    if ipaddress.ip_address(src).version == 4:
        message = icmp_echo(ICMP_ECHO_REQUEST, ident, seq, payload)
        return ipv4_packet(src, dst, PROTO_ICMP, message)
    message = icmp_echo(ICMPV6_ECHO_REQUEST, ident, seq, payload, v6_addresses=(src, dst))
    return ipv6_packet(src, dst, PROTO_ICMPV6, message)


@dataclass(frozen=True)
class IPPacket:
    version: int
    src: IPAddress
    dst: IPAddress
    protocol: int  # IPv6: next header
    ttl: int  # IPv6: hop limit
    payload: bytes


def parse_ip(packet: bytes) -> IPPacket:
    """Parse a whole IP packet whose stated length must equal len(packet)."""
    if not packet:
        raise ValueError("empty packet")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < IPV4_HEADER_LEN:
            raise ValueError("short IPv4 header")
        ihl = (packet[0] & 0x0F) * 4
        total_len = struct.unpack_from("!H", packet, 2)[0]
        if ihl < IPV4_HEADER_LEN or total_len != len(packet) or ihl > total_len:
            raise ValueError(f"bad IPv4 lengths: ihl={ihl} total={total_len} have={len(packet)}")
        if internet_checksum(packet[:ihl]) != 0:
            raise ValueError("bad IPv4 header checksum")
        return IPPacket(
            4,
            ipaddress.IPv4Address(packet[12:16]),
            ipaddress.IPv4Address(packet[16:20]),
            packet[9],
            packet[8],
            packet[ihl:],
        )
    if version == 6:
        if len(packet) < IPV6_HEADER_LEN:
            raise ValueError("short IPv6 header")
        payload_len = struct.unpack_from("!H", packet, 4)[0]
        if IPV6_HEADER_LEN + payload_len != len(packet):
            raise ValueError(f"bad IPv6 length: payload={payload_len} have={len(packet)}")
        return IPPacket(
            6,
            ipaddress.IPv6Address(packet[8:24]),
            ipaddress.IPv6Address(packet[24:40]),
            packet[6],
            packet[7],
            packet[IPV6_HEADER_LEN:],
        )
    raise ValueError(f"not an IP packet (version {version})")


@dataclass(frozen=True)
class Echo:
    kind: int  # ICMP type
    ident: int
    seq: int
    payload: bytes

    @property
    def is_request(self) -> bool:
        return self.kind in (ICMP_ECHO_REQUEST, ICMPV6_ECHO_REQUEST)

    @property
    def is_reply(self) -> bool:
        return self.kind in (ICMP_ECHO_REPLY, ICMPV6_ECHO_REPLY)


def parse_echo(packet: IPPacket) -> Echo | None:
    """The ICMP echo message in `packet`, None if it is another kind of packet.

    Raises ValueError if it is ICMP but the checksum is wrong.
    """
    expected_proto = PROTO_ICMP if packet.version == 4 else PROTO_ICMPV6
    body = packet.payload
    if packet.protocol != expected_proto or len(body) < 8:
        return None
    pseudo = b""
    if packet.version == 6:
        pseudo = _icmpv6_pseudo_header(packet.src, packet.dst, len(body))
    if internet_checksum(pseudo + body) != 0:
        raise ValueError("bad ICMP checksum")
    kind, code, _checksum, ident, seq = struct.unpack_from("!BBHHH", body)
    echo_kinds = (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
    if kind not in echo_kinds or code != 0:
        return None
    return Echo(kind, ident, seq, body[8:])


def echo_reply_to(request: bytes) -> bytes:
    """The echo reply a host would send for an echo-request IP packet."""
    packet = parse_ip(request)
    echo = parse_echo(packet)
    if echo is None or not echo.is_request:
        raise ValueError("not an echo request")
    src, dst = str(packet.dst), str(packet.src)
    if packet.version == 4:
        message = icmp_echo(ICMP_ECHO_REPLY, echo.ident, echo.seq, echo.payload)
        return ipv4_packet(src, dst, PROTO_ICMP, message)
    message = icmp_echo(
        ICMPV6_ECHO_REPLY, echo.ident, echo.seq, echo.payload, v6_addresses=(src, dst)
    )
    return ipv6_packet(src, dst, PROTO_ICMPV6, message)

"""wg(8) / wg-quick(8) configuration files, checked against the real tools.

The real `wg` parses a file before it talks to an interface, and it talks to a
userspace interface over /var/run/wireguard/<name>.sock. A fake socket there
(FakeUapi) lets `wg setconf` show what it understood from a file (the `set=1`
body it sends) and lets `wg showconf` print a configuration we hand it, with no
WireGuard interface at all. `wg-quick strip` needs no interface either.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest
import wgpy
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from wgpy.config import (
    Config,
    ConfigError,
    Endpoint,
    InterfaceConfig,
    PeerConfig,
    load,
    parse,
    read_key_file,
    resolve_endpoint,
    save,
    write_private_key,
)

WG = shutil.which("wg")
WG_QUICK = shutil.which("wg-quick")
WG_RUN_DIR = Path("/var/run/wireguard")
IS_ROOT = os.geteuid() == 0
needs_wg = pytest.mark.skipif(
    WG is None or not IS_ROOT, reason="needs the wg binary and root for /var/run/wireguard"
)
needs_wg_quick = pytest.mark.skipif(
    WG_QUICK is None or not IS_ROOT, reason="needs wg-quick (it runs only as root)"
)

PRIV = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
PUB = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
PUB2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
PSK = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="
WS = " \t\n\v\f\r"


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


# --- parsing -------------------------------------------------------------------------------

FULL = f"""\
# wg0.conf: a server with every key wg and wg-quick know
[Interface]
Address = 10.200.100.1/24, fd42:42:42::1/64
Address = 10.200.101.1/24
DNS = 10.200.100.1, fd42:42:42::1
DNS = corp.example.com
MTU = 1420
Table = 1234
PreUp = echo pre-up %i
PostUp = iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE
PreDown = echo "pre down"
PostDown = iptables -D FORWARD -i %i -j ACCEPT
SaveConfig = true
ListenPort = 51820
FwMark = 0x1234
PrivateKey = {PRIV}

[Peer]
# laptop
PublicKey = {PUB}
PresharedKey = {PSK}
AllowedIPs = 10.200.100.2/32, fd42:42:42::2/128
AllowedIPs = 192.168.7.0/24
Endpoint = 203.0.113.7:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {PUB2}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = [2001:db8::1]:443
PersistentKeepalive = off
"""


def test_full_wg_quick_file():
    c = parse(FULL, path="wg0.conf")
    i = c.interface
    assert i.private_key == wgpy.PrivateKey.from_base64(PRIV)
    assert i.listen_port == 51820
    assert i.fwmark == 0x1234
    assert i.addresses == [
        ipaddress.IPv4Interface("10.200.100.1/24"),
        ipaddress.IPv6Interface("fd42:42:42::1/64"),
        ipaddress.IPv4Interface("10.200.101.1/24"),
    ]
    assert i.dns == ["10.200.100.1", "fd42:42:42::1", "corp.example.com"]
    assert i.dns_servers == ["10.200.100.1", "fd42:42:42::1"]
    assert i.dns_search == ["corp.example.com"]
    assert i.mtu == 1420
    assert i.table == "1234"
    assert i.pre_up == ["echo pre-up %i"]
    assert i.post_up == [
        "iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE"
    ]
    assert i.pre_down == ['echo "pre down"']
    assert i.post_down == ["iptables -D FORWARD -i %i -j ACCEPT"]
    assert i.save_config is True
    laptop, gateway = c.peers
    assert laptop == PeerConfig(
        public_key=wgpy.PublicKey.from_base64(PUB),
        preshared_key=wgpy.PresharedKey.from_base64(PSK),
        allowed_ips=[net("10.200.100.2/32"), net("fd42:42:42::2/128"), net("192.168.7.0/24")],
        endpoint=Endpoint("203.0.113.7", 51820),
        persistent_keepalive=25,
    )
    assert gateway.public_key == wgpy.PublicKey.from_base64(PUB2)
    assert gateway.preshared_key is None
    assert gateway.allowed_ips == [net("0.0.0.0/0"), net("::/0")]
    assert gateway.endpoint == Endpoint("2001:db8::1", 443)
    assert str(gateway.endpoint) == "[2001:db8::1]:443"
    assert gateway.persistent_keepalive == 0


def test_wg_only_file_as_showconf_prints_it():
    text = f"""\
[Interface]
ListenPort = 51820
FwMark = 0xca6c
PrivateKey = {PRIV}

[Peer]
PublicKey = {PUB}
AllowedIPs = 10.0.0.2/32
Endpoint = 192.0.2.1:51820
"""
    c = parse(text)
    assert c.interface == InterfaceConfig(
        private_key=wgpy.PrivateKey.from_base64(PRIV), listen_port=51820, fwmark=0xCA6C
    )
    assert c.peers == [
        PeerConfig(
            public_key=wgpy.PublicKey.from_base64(PUB),
            allowed_ips=[net("10.0.0.2/32")],
            endpoint=Endpoint("192.0.2.1", 51820),
        )
    ]
    assert c.to_wg() == text
    assert c.to_wg_quick() == text


def test_comments_case_and_whitespace_as_wg_reads_them():
    # wg deletes all whitespace in a line, so even "Listen Port" and "[ peer ]" work;
    # wg-quick keys keep their inner spaces, so their values do too.
    text = (
        "  # leading comment\r\n"
        + "[interface]   # trailing comment\r\n"
        + "\r\n"
        + "\tprivatekey\t=\t" + PRIV + "\t# the key\r\n"
        + "Listen Port= 5 1820\r\n"
        + "FWMARK=OFF\r\n"
        + "address=10.0.0.1/24    fd00::1/64,10.0.1.1\r\n"
        + "postup   =   echo a=b   c   # not part of the command\r\n"
        + "SAVECONFIG = False\r\n"
        + "[ PEER ]\r\n"
        + "PUBLICKEY = " + PUB[:20] + " " + PUB[20:] + "\r\n"
        + "allowedips = 10.0.0.0 / 8 , fd00::/ 8\r\n"
        + "endpoint = [ fd00::1 ] : 51820\r\n"
        + "persistentkeepalive = OfF\r\n"
        + "#[Peer]\r\n"
    )  # fmt: skip
    c = parse(text)
    i = c.interface
    assert i.private_key == wgpy.PrivateKey.from_base64(PRIV)
    assert i.listen_port == 51820
    assert i.fwmark == 0
    assert [str(a) for a in i.addresses] == ["10.0.0.1/24", "fd00::1/64", "10.0.1.1/32"]
    assert i.post_up == ["echo a=b   c"]
    assert i.save_config is False
    (peer,) = c.peers
    assert peer.public_key == wgpy.PublicKey.from_base64(PUB)
    assert peer.allowed_ips == [net("10.0.0.0/8"), net("fd00::/8")]
    assert peer.endpoint == Endpoint("fd00::1", 51820)
    assert peer.persistent_keepalive == 0


def test_unicode_spaces_are_not_whitespace():
    # Neither tool strips a no-break space (C isspace), so neither do we.
    with pytest.raises(ConfigError, match=r"unknown key"):
        parse("[Interface]\n\u00a0ListenPort = 1\n")


def test_repeated_keys():
    text = f"""\
[Interface]
ListenPort = 1
ListenPort = 2
PrivateKey = {PRIV}
MTU = 1400
MTU = 1380
Table = off
Table =
MTU =
PostUp = one
PostUp = two
[Interface]
FwMark = 7
[Peer]
PublicKey = {PUB2}
PublicKey = {PUB}
AllowedIPs = 10.0.0.1/24
AllowedIPs = 10.0.0.2/24, 10.1.0.0/16
"""
    c = parse(text)
    # As wg and wg-quick: a scalar is overridden, lists add, sections merge, and an
    # empty MTU or Table goes back to automatic.
    assert c.interface.listen_port == 2
    assert c.interface.fwmark == 7
    assert c.interface.mtu is None
    assert c.interface.table is None
    assert c.interface.post_up == ["one", "two"]
    (peer,) = c.peers
    assert peer.public_key == wgpy.PublicKey.from_base64(PUB)
    # Host bits are masked as the kernel does; duplicates are kept as written.
    assert peer.allowed_ips == [net("10.0.0.0/24"), net("10.0.0.0/24"), net("10.1.0.0/16")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("off", 0),
        ("OFF", 0),
        ("0", 0),
        ("010", 10),  # strtoul base 10: not octal
        ("0x10", 16),
        ("0xAb", 0xAB),
        ("0x0000000000ffffffff", 0xFFFFFFFF),
        ("4294967295", 0xFFFFFFFF),
    ],
)
def test_fwmark_forms(value, expected):
    assert parse(f"[Interface]\nFwMark = {value}\n").interface.fwmark == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.1:51820", Endpoint("192.0.2.1", 51820)),
        ("[2001:db8::1]:51820", Endpoint("2001:db8::1", 51820)),
        ("[2001:DB8:0::0001]:1", Endpoint("2001:db8::1", 1)),
        ("2001:db8::1:51820", Endpoint("2001:db8::1", 51820)),  # wg splits at the last colon
        ("[fe80::1%lo]:51820", Endpoint("fe80::1%lo", 51820)),
        ("[192.0.2.1]:5", Endpoint("192.0.2.1", 5)),
        ("vpn.example.com:51820", Endpoint("vpn.example.com", 51820)),
        ("localhost:065535", Endpoint("localhost", 65535)),
    ],
)
def test_endpoint_forms(value, expected):
    c = parse(f"[Peer]\nPublicKey = {PUB}\nEndpoint = {value}\n")
    assert c.peers[0].endpoint == expected
    assert Endpoint.parse(value) == expected


def test_endpoint_object():
    assert str(Endpoint("[FD00::1]", 5)) == "[fd00::1]:5"
    assert str(Endpoint("example.com", 5)) == "example.com:5"
    with pytest.raises(ConfigError, match="port must be 1-65535"):
        Endpoint("192.0.2.1", 0)
    with pytest.raises(ConfigError, match="not a host name"):
        Endpoint("bad host", 1)
    with pytest.raises(ConfigError, match=r"^invalid Endpoint 'x': no port"):
        Endpoint.parse("x")


def test_dns_entries_split_like_wg_quick():
    c = parse("[Interface]\nDNS = 1.1.1.1 2606:4700::1111,example.com, ~corp ~.\n")
    assert c.interface.dns == ["1.1.1.1", "2606:4700::1111", "example.com", "~corp", "~."]
    assert c.interface.dns_servers == ["1.1.1.1", "2606:4700::1111"]
    assert c.interface.dns_search == ["example.com", "~corp", "~."]


def test_table_values_kept_as_written():
    for value in ("off", "auto", "main", "51820", "Off"):
        assert parse(f"[Interface]\nTable = {value}\n").interface.table == value


def test_empty_and_peer_only_files():
    assert parse("") == Config()
    assert parse("# nothing\n\n   \n") == Config()
    c = parse(f"[Peer]\nPublicKey = {PUB}\n")
    assert c.interface == InterfaceConfig()
    assert c.to_wg() == f"[Interface]\n\n[Peer]\nPublicKey = {PUB}\n"


# --- errors --------------------------------------------------------------------------------

IF = "[Interface]\n"
P = f"[Peer]\nPublicKey = {PUB}\n"
FW = "must be off, 0-4294967295 or 0x0-0xffffffff"
KEY = "a key is 44 characters of base64 ending in '='"
PREFIX32 = "prefix length must be a decimal number 0-32"
NO_PORT = "no port; write host:port or [IPv6]:port"
KEEPALIVE = "must be off or 0-65535 seconds"
BIG = "1" + "0" * 5000
# (file, line, message)
ERRORS = [
    # [Interface], wg
    (IF + "ListenPort = 70000", 2, "invalid ListenPort '70000': port must be 0-65535"),
    (
        IF + "ListenPort = domain",
        2,
        "invalid ListenPort 'domain': port must be a decimal number 0-65535",
    ),
    (IF + "ListenPort = +5", 2, "invalid ListenPort '+5': port must be a decimal number 0-65535"),
    (IF + f"ListenPort = {BIG}", 2, f"invalid ListenPort '{BIG}': port must be 0-65535"),
    (IF + "FwMark = 0X10", 2, f"invalid FwMark '0X10': {FW}"),
    (IF + "FwMark = 0x100000000", 2, f"invalid FwMark '0x100000000': {FW}"),
    (IF + "FwMark = 4294967296", 2, f"invalid FwMark '4294967296': {FW}"),
    (IF + "FwMark = 0x", 2, f"invalid FwMark '0x': {FW}"),
    (IF + "PrivateKey = nope", 2, f"invalid PrivateKey: {KEY}"),
    (IF + "ListenPort =", 2, "ListenPort has no value"),
    # [Interface], wg-quick
    (IF + "MTU = 67", 2, "invalid MTU '67': MTU must be 68-65535"),
    (IF + "MTU = 65536", 2, "invalid MTU '65536': MTU must be 68-65535"),
    (IF + "MTU = 1420 bytes", 2, "invalid MTU '1420 bytes': MTU must be a decimal number 68-65535"),
    (IF + "SaveConfig = yes", 2, "invalid SaveConfig 'yes': must be true or false"),
    (IF + "SaveConfig =", 2, "invalid SaveConfig '': must be true or false"),
    (
        IF + "Table = my table",
        2,
        "invalid Table 'my table': must be off, auto, a table number or a table name",
    ),
    (IF + "Table = 4294967296", 2, "invalid Table '4294967296': table number must be 0-4294967295"),
    (IF + "Address = 10.0.0.1/33", 2, "invalid Address '10.0.0.1/33': prefix length must be 0-32"),
    (
        IF + "Address = 10.0.0.1/24, 10.0.0.300",
        2,
        "invalid Address '10.0.0.300': '10.0.0.300' is not an IPv4 address",
    ),
    (
        IF + "Address = fe80::1%eth0/64",
        2,
        "invalid Address 'fe80::1%eth0/64': 'fe80::1%eth0' is not an IPv6 address",
    ),
    (IF + "Address = 10.0.0.1/255.0.0.0", 2, f"invalid Address '10.0.0.1/255.0.0.0': {PREFIX32}"),
    (IF + "DNS = 1.2.3", 2, "invalid DNS '1.2.3': '1.2.3' is not an IP address"),
    (IF + "DNS = fd00::1::2", 2, "invalid DNS 'fd00::1::2': 'fd00::1::2' is not an IP address"),
    (
        IF + "DNS = bad!domain",
        2,
        "invalid DNS 'bad!domain': 'bad!domain' is neither an IP address nor a search domain",
    ),
    # [Peer]
    (
        P + "AllowedIPs = 10.0.0.0/33",
        3,
        "invalid AllowedIPs '10.0.0.0/33': prefix length must be 0-32",
    ),
    (
        P + "AllowedIPs = fd00::/129",
        3,
        "invalid AllowedIPs 'fd00::/129': prefix length must be 0-128",
    ),
    (
        P + "AllowedIPs = 10.0.0.0/8, 10.0.0.256",
        3,
        "invalid AllowedIPs '10.0.0.256': '10.0.0.256' is not an IPv4 address",
    ),
    (
        P + "AllowedIPs = 010.0.0.0/8",
        3,
        "invalid AllowedIPs '010.0.0.0/8': '010.0.0.0' is not an IPv4 address",
    ),
    (
        P + "AllowedIPs = 10.0.0.0/255.0.0.0",
        3,
        f"invalid AllowedIPs '10.0.0.0/255.0.0.0': {PREFIX32}",
    ),
    (P + "AllowedIPs = 10.0.0.0/", 3, f"invalid AllowedIPs '10.0.0.0/': {PREFIX32}"),
    (
        P + "AllowedIPs = fe80::1%eth0/64",
        3,
        "invalid AllowedIPs 'fe80::1%eth0/64': 'fe80::1%eth0' is not an IPv6 address",
    ),
    (P + "AllowedIPs = 10.0.0.0/8,", 3, "invalid AllowedIPs '10.0.0.0/8,': empty entry"),
    (P + "AllowedIPs = /8", 3, "invalid AllowedIPs '/8': no address"),
    (
        P + "AllowedIPs = 10.0.0.0/8 10.1.0.0/16",
        3,
        f"invalid AllowedIPs '10.0.0.0/810.1.0.0/16': {PREFIX32}",
    ),
    (P + "AllowedIPs =", 3, "AllowedIPs has no value"),
    (P + "Endpoint = 192.0.2.1", 3, f"invalid Endpoint '192.0.2.1': {NO_PORT}"),
    (P + "Endpoint = 192.0.2.1:", 3, f"invalid Endpoint '192.0.2.1:': {NO_PORT}"),
    (P + "Endpoint = [fd00::1", 3, "invalid Endpoint '[fd00::1': no ']' after the IPv6 address"),
    (P + "Endpoint = [fd00::1]", 3, "invalid Endpoint '[fd00::1]': no port; write [address]:port"),
    (
        P + "Endpoint = [fd00::1]:",
        3,
        "invalid Endpoint '[fd00::1]:': no port; write [address]:port",
    ),
    (P + "Endpoint = 192.0.2.1:0", 3, "invalid Endpoint '192.0.2.1:0': port must be 1-65535"),
    (
        P + "Endpoint = 192.0.2.1:65536",
        3,
        "invalid Endpoint '192.0.2.1:65536': port must be 1-65535",
    ),
    (
        P + "Endpoint = host:https",
        3,
        "invalid Endpoint 'host:https': port must be a decimal number 1-65535",
    ),
    (
        P + "Endpoint = fd00::zz:1",
        3,
        "invalid Endpoint 'fd00::zz:1': 'fd00::zz' is not an IPv6 address",
    ),
    (
        P + "Endpoint = bad!host:1",
        3,
        "invalid Endpoint 'bad!host:1': 'bad!host' is not a host name or an IP address",
    ),
    (P + "Endpoint = []:1", 3, "invalid Endpoint '[]:1': empty host"),
    (P + "PersistentKeepalive = 65536", 3, f"invalid PersistentKeepalive '65536': {KEEPALIVE}"),
    (P + "PersistentKeepalive = -1", 3, f"invalid PersistentKeepalive '-1': {KEEPALIVE}"),
    (P + f"PresharedKey = {PSK[:-2]}", 3, f"invalid PresharedKey: {KEY}"),
    (f"[Peer]\nPublicKey = {PUB[:-2]}B=", 2, f"invalid PublicKey '{PUB[:-2]}B=': {KEY}"),
    # structure
    ("ListenPort = 1", 1, "'ListenPort' is outside of any section"),
    ("\nMTU = 1400\n[Interface]", 2, "MTU is outside of any section; it belongs in [Interface]"),
    (IF + "[Foo]", 2, "unknown section '[Foo]'; expected [Interface] or [Peer]"),
    ("[Interface]x", 1, "unknown section '[Interface]x'; expected [Interface] or [Peer]"),
    (IF + "ListenPort", 2, "expected 'Key = Value', got 'ListenPort'"),
    (IF + "Foo = 1", 2, "unknown key 'Foo' in [Interface]"),
    (IF + "Post Up = echo", 2, "unknown key 'Post Up' in [Interface]"),
    (IF + f"PublicKey = {PUB}", 2, "PublicKey is not valid in [Interface]"),
    (P + "ListenPort = 1", 3, "ListenPort is not valid in [Peer]"),
    (P + "Address = 10.0.0.1/24", 3, "Address is only valid in [Interface], not in [Peer]"),
    (P + "postup = echo", 3, "PostUp is only valid in [Interface], not in [Peer]"),
    (
        "[ Interface ]\nMTU = 1400",
        2,
        "wg-quick does not see MTU because the [Interface] header has spaces inside its brackets",
    ),
    (IF + "\n[Peer]\nAllowedIPs = 10.0.0.0/8", 3, "[Peer] has no PublicKey"),
    (P + "\n" + P, 5, f"duplicate peer {PUB} (first at line 2)"),
]


@pytest.mark.parametrize(("text", "line", "message"), ERRORS)
def test_errors_name_file_and_line(text, line, message):
    with pytest.raises(ConfigError) as info:
        parse(text + "\n", path="wg0.conf")
    assert str(info.value) == f"wg0.conf:{line}: {message}"
    assert (info.value.path, info.value.line, info.value.message) == ("wg0.conf", line, message)
    # Nothing from a lower layer is chained or leaks out.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None


def test_secrets_never_appear_in_errors():
    bad = PRIV[:-2] + "B="  # a private key with one bit flipped past the end
    for text in (f"[Interface]\nPrivateKey = {bad}\n", f"{P}PresharedKey = {bad}\n"):
        with pytest.raises(ConfigError) as info:
            parse(text)
        assert PRIV[:20] not in str(info.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
    assert str(ConfigError("x")) == "x"
    assert str(ConfigError("x", path="f")) == "f: x"


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list("[]=#,:/.% \t\n\r0123456789abcdefxIPnterfacAldUTMSvu+-")),
        max_size=80,
    )
)
@example("[Interface]\nListenPort=")
@example("[Peer]\nEndpoint=[")
def test_anything_either_parses_or_raises_config_error(text):
    try:
        parse(text)
    except ConfigError as e:
        assert re.match(r"<string>:\d+: ", str(e))


# --- writing and round trips ---------------------------------------------------------------


def test_round_trip_full_file():
    c = parse(FULL)
    assert parse(c.to_wg_quick()) == c
    assert parse(c.to_wg_quick()).to_wg_quick() == c.to_wg_quick()


def test_to_wg_quick_layout():
    c = parse(FULL)
    assert (
        c.to_wg_quick()
        == f"""\
[Interface]
Address = 10.200.100.1/24, fd42:42:42::1/64, 10.200.101.1/24
DNS = 10.200.100.1, fd42:42:42::1, corp.example.com
MTU = 1420
Table = 1234
SaveConfig = true
PreUp = echo pre-up %i
PostUp = iptables -A FORWARD -i %i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE
PreDown = echo "pre down"
PostDown = iptables -D FORWARD -i %i -j ACCEPT
ListenPort = 51820
FwMark = 0x1234
PrivateKey = {PRIV}

[Peer]
PublicKey = {PUB}
PresharedKey = {PSK}
AllowedIPs = 10.200.100.2/32, fd42:42:42::2/128, 192.168.7.0/24
Endpoint = 203.0.113.7:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {PUB2}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = [2001:db8::1]:443
PersistentKeepalive = off
"""
    )


def test_to_wg_drops_only_wg_quick_keys():
    c = parse(FULL)
    stripped = parse(c.to_wg())
    assert stripped.peers == c.peers
    assert stripped.interface == InterfaceConfig(
        private_key=c.interface.private_key,
        listen_port=c.interface.listen_port,
        fwmark=c.interface.fwmark,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: setattr(c.interface, "listen_port", 65536), "cannot write ListenPort '65536'"),
        (lambda c: setattr(c.interface, "mtu", 10), "cannot write MTU '10'"),
        (lambda c: c.interface.post_up.append("echo # no"), "cannot write PostUp 'echo # no'"),
        (lambda c: c.interface.pre_down.append("a\nb"), "cannot write PreDown 'a\\nb'"),
        (lambda c: c.interface.pre_up.append(" x"), "cannot write PreUp ' x'"),
        (lambda c: c.interface.dns.append("a b"), "cannot write DNS 'a b'"),
        (lambda c: setattr(c.interface, "table", "a b"), "cannot write Table 'a b'"),
        (
            lambda c: setattr(c.peers[0], "persistent_keepalive", -1),
            "cannot write PersistentKeepalive",
        ),
        (
            lambda c: c.interface.addresses.append(ipaddress.IPv6Interface("fe80::1%eth0/64")),
            "cannot write Address 'fe80::1%eth0/64'",
        ),
    ],
)
def test_writer_refuses_what_would_not_read_back(change, message):
    c = parse(FULL)
    change(c)
    with pytest.raises(ConfigError, match=re.escape(message)):
        c.to_wg_quick()


KEY_BYTES = st.binary(min_size=32, max_size=32)
IPV4 = st.ip_addresses(v=4)
IPV6 = st.ip_addresses(v=6)


ADDRESSES = st.one_of(
    st.builds(lambda a, p: ipaddress.IPv4Interface((a, p)), IPV4, st.integers(0, 32)),
    st.builds(lambda a, p: ipaddress.IPv6Interface((a, p)), IPV6, st.integers(0, 128)),
)
NETWORKS = st.one_of(
    st.builds(lambda a, p: ipaddress.IPv4Network((a, p), strict=False), IPV4, st.integers(0, 32)),
    st.builds(lambda a, p: ipaddress.IPv6Network((a, p), strict=False), IPV6, st.integers(0, 128)),
)
HOOK = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="#"),
    max_size=30,
).map(lambda s: s.strip(WS))
DNS = st.one_of(
    IPV4.map(str),
    IPV6.map(str),
    st.sampled_from(["example.com", "corp.internal.", "~corp", "~.", "a-b_c"]),
)


def endpoints(names: list[str]) -> st.SearchStrategy[Endpoint]:
    return st.builds(
        Endpoint,
        st.one_of(IPV4.map(str), IPV6.map(str), st.sampled_from(names)),
        st.integers(1, 65535),
    )


INTERFACES = st.builds(
    InterfaceConfig,
    private_key=st.none() | KEY_BYTES.map(wgpy.PrivateKey.from_bytes),
    listen_port=st.none() | st.integers(0, 65535),
    fwmark=st.none() | st.integers(0, 0xFFFFFFFF),
    addresses=st.lists(ADDRESSES, max_size=3),
    dns=st.lists(DNS, max_size=3),
    mtu=st.none() | st.integers(68, 65535),
    table=st.none()
    | st.sampled_from(["off", "auto", "main"])
    | st.integers(0, 0xFFFFFFFF).map(str),
    pre_up=st.lists(HOOK, max_size=2),
    post_up=st.lists(HOOK, max_size=2),
    pre_down=st.lists(HOOK, max_size=2),
    post_down=st.lists(HOOK, max_size=2),
    save_config=st.booleans(),
)


def configs(names: list[str]) -> st.SearchStrategy[Config]:
    """Configurations whose endpoint host names are taken from `names`."""
    peers = st.builds(
        PeerConfig,
        public_key=KEY_BYTES.map(wgpy.PublicKey.from_bytes),
        preshared_key=st.none() | KEY_BYTES.map(wgpy.PresharedKey.from_bytes),
        allowed_ips=st.lists(NETWORKS, max_size=4),
        endpoint=st.none() | endpoints(names),
        persistent_keepalive=st.none() | st.integers(0, 65535),
    )
    return st.builds(
        Config,
        interface=INTERFACES,
        peers=st.lists(peers, max_size=3, unique_by=lambda p: bytes(p.public_key)),
    )


CONFIGS = configs(["localhost", "vpn.example.com", "a-b.example."])
# For the tests that make `wg` resolve the names: no lookup may leave the machine.
LOCAL_CONFIGS = configs(["localhost"])


@settings(max_examples=150, deadline=None)
@given(CONFIGS)
def test_round_trip_property(c):
    assert parse(c.to_wg_quick()) == c
    wg_only = parse(c.to_wg())
    assert wg_only.peers == c.peers
    assert wg_only.interface.private_key == c.interface.private_key
    assert wg_only.interface.listen_port == c.interface.listen_port
    assert wg_only.interface.fwmark == c.interface.fwmark


def messy(text: str, data: st.DataObject) -> str:
    """The same file as a person might type it: any case, spacing and comments."""
    out = []
    for line in text.split("\n"):
        if line.startswith("["):
            name = "".join(ch.upper() if data.draw(st.booleans()) else ch.lower() for ch in line)
            out.append(name + data.draw(st.sampled_from(["", "  ", " # section"])))
            continue
        key, sep, value = line.partition(" = ")
        if sep:
            key = data.draw(st.sampled_from([key, key.lower(), key.upper()]))
            pad = data.draw(st.sampled_from(["=", " =", "= ", "\t=\t", "  =  "]))
            end = data.draw(st.sampled_from(["", " ", "\t# comment", "\r"]))
            line = data.draw(st.sampled_from(["", " ", "\t"])) + key + pad + value + end
        out.append(line)
        if data.draw(st.integers(0, 4)) == 0:
            out.append(data.draw(st.sampled_from(["", "# note", "   ", "\t# x = y"])))
    return "\n".join(out)


@settings(max_examples=100, deadline=None)
@given(CONFIGS, st.data())
def test_round_trip_through_hand_formatting(c, data):
    assert parse(messy(c.to_wg_quick(), data)) == c


# --- files and key files ------------------------------------------------------------------


def test_load_names_the_file(tmp_path):
    path = tmp_path / "wg7.conf"
    path.write_text(FULL)
    assert load(path) == parse(FULL)
    path.write_text("[Interface]\nListenPort = x\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2: invalid ListenPort 'x'")):
        load(path)
    path.write_bytes(b"[Interface]\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2: not valid UTF-8")):
        load(str(path))
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.conf")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_key_is_0600_even_with_umask_0_and_an_old_file(tmp_path):
    key = wgpy.PrivateKey.generate()
    old = tmp_path / "old.key"
    old.write_text("old\n")
    old.chmod(0o644)
    previous = os.umask(0)
    try:
        write_private_key(tmp_path / "new.key", key)
        write_private_key(old, key)
    finally:
        os.umask(previous)
    for path in (tmp_path / "new.key", old):
        assert mode_of(path) == 0o600
        assert path.read_text() == key.to_base64() + "\n"
        assert read_key_file(path, wgpy.PrivateKey) == key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.key", "old.key"]


def test_write_private_key_is_never_readable_by_others(tmp_path, monkeypatch):
    # Every file the writer creates is 0600 from the os.open() that creates it.
    seen: list[int] = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):
        if flags & os.O_CREAT:
            seen.append(mode)
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    write_private_key(tmp_path / "k", wgpy.PresharedKey.generate())
    save(parse(FULL), tmp_path / "wg0.conf")
    assert seen == [0o600, 0o600]
    assert mode_of(tmp_path / "wg0.conf") == 0o600
    assert load(tmp_path / "wg0.conf") == parse(FULL)


def test_save_and_load_round_trip(tmp_path):
    c = parse(FULL)
    c.interface.post_up.append("logger 'tunnel up: café ✓'")
    save(c, tmp_path / "wg0.conf")
    assert load(tmp_path / "wg0.conf") == c
    save(c, tmp_path / "wg0.conf", wg_quick=False)
    assert (tmp_path / "wg0.conf").read_text() == c.to_wg()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wg0.conf"]


def test_write_does_not_follow_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    link = tmp_path / "k"
    link.symlink_to(target)
    write_private_key(link, wgpy.PrivateKey.generate())
    assert target.read_text() == "keep\n"
    assert not link.is_symlink()


def test_read_key_file(tmp_path):
    path = tmp_path / "pub"
    path.write_text(f"\n  {PUB}\r\n\n")
    assert read_key_file(path, wgpy.PublicKey) == wgpy.PublicKey.from_base64(PUB)
    path.write_text("")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: empty key file")):
        read_key_file(path, wgpy.PublicKey)
    path.write_text(PRIV[:-2] + "B=\n")
    with pytest.raises(ConfigError) as info:
        read_key_file(path, wgpy.PrivateKey)
    assert str(info.value) == f"{path}: not a key: a key is 44 characters of base64 ending in '='"
    path.write_bytes(b"\xff" * 44)
    with pytest.raises(ConfigError):
        read_key_file(path, wgpy.PrivateKey)


@pytest.mark.skipif(WG is None, reason="the wg binary is not installed")
def test_key_files_interoperate_with_wg(tmp_path):
    assert WG is not None
    genkey = subprocess.run([WG, "genkey"], capture_output=True, text=True, check=True)
    (tmp_path / "theirs").write_text(genkey.stdout)
    ours = read_key_file(tmp_path / "theirs", wgpy.PrivateKey)
    assert ours.to_base64() == genkey.stdout.strip()
    key = wgpy.PrivateKey.generate()
    write_private_key(tmp_path / "mine", key)
    with open(tmp_path / "mine") as f:
        pub = subprocess.run([WG, "pubkey"], stdin=f, capture_output=True, text=True, check=True)
    assert pub.stdout.strip() == key.public_key().to_base64()


# --- endpoint resolution -------------------------------------------------------------------


def test_resolve_literal_endpoints():
    assert resolve_endpoint(Endpoint("192.0.2.1", 51820)) == ("192.0.2.1", 51820)
    assert resolve_endpoint(Endpoint("2001:db8::1", 1)) == ("2001:db8::1", 1)
    assert resolve_endpoint("[2001:db8::1]:7") == ("2001:db8::1", 7)


def test_resolve_localhost():
    host, port = resolve_endpoint(Endpoint("localhost", 51820))
    assert (host, port) in {("127.0.0.1", 51820), ("::1", 51820)}
    assert resolve_endpoint(Endpoint("localhost", 5), family=socket.AF_INET) == ("127.0.0.1", 5)


def test_resolve_failure_names_the_host():
    with pytest.raises(ConfigError, match=r"^cannot resolve endpoint host '192\.0\.2\.1': "):
        resolve_endpoint(Endpoint("192.0.2.1", 1), family=socket.AF_INET6)


# --- the real tools ------------------------------------------------------------------------


class FakeUapi:
    """A listening /var/run/wireguard/<name>.sock that `wg` takes for an interface."""

    def __init__(self) -> None:
        self.name = "wgcfg" + secrets.token_hex(4)
        self.path = WG_RUN_DIR / f"{self.name}.sock"
        self.requests: list[str] = []
        self.get_reply = "errno=0\n\n"
        self._stop = threading.Event()

    def __enter__(self) -> FakeUapi:
        WG_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        self._sock.listen(8)
        self._sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
        self.path.unlink(missing_ok=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    # wg first connects once only to see that the socket is alive.
                    while not data.endswith(b"\n\n"):
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        continue
                    request = data.decode()
                    self.requests.append(request)
                    reply = self.get_reply if request.startswith("get=1") else "errno=0\n\n"
                    conn.sendall(reply.encode())
                except OSError:
                    pass

    def wg(self, *args: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
        assert WG is not None
        self.requests.clear()
        argv = [WG, *args, self.name] + ([str(path)] if path else [])
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)


@pytest.fixture(scope="module")
def uapi():
    if WG is None or not IS_ROOT:
        pytest.skip("needs the wg binary and root for /var/run/wireguard")
    with FakeUapi() as fake:
        yield fake


@pytest.fixture(scope="module")
def conf_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("conf")


def wg_setconf(uapi: FakeUapi, conf_dir: Path, text: str) -> dict | None:
    """What `wg setconf` sends for `text` (as a model), or None if it rejects the file."""
    path = conf_dir / "setconf.conf"
    path.write_text(text)
    result = uapi.wg("setconf", path=path)
    if result.returncode != 0:
        assert "parsing error" in result.stderr or "Invalid configuration" in result.stderr
        return None
    (request,) = uapi.requests
    return model_of_uapi_set(request)


def endpoint_key(text: str) -> tuple[object, int]:
    host, _, port = text.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)


def model_of_uapi_set(request: str) -> dict:
    lines = request.split("\n")
    assert lines[0] == "set=1"
    device: dict = {"peers": []}
    peer: dict | None = None
    for line in lines[1:]:
        if not line:
            continue
        key, _, value = line.partition("=")
        if key == "public_key":
            peer = {"public_key": value, "allowed_ips": []}
            device["peers"].append(peer)
        elif peer is None:
            device[key] = value
        elif key == "allowed_ip":
            peer["allowed_ips"].append(net(value))  # the kernel masks host bits
        elif key == "endpoint":
            peer[key] = endpoint_key(value)
        else:
            peer[key] = value
    return device


def model_of_config(c: Config) -> dict:
    """What `wg setconf` should send for `c`."""
    i = c.interface
    device: dict = {
        "private_key": i.private_key.to_bytes().hex() if i.private_key else "00" * 32,
        "listen_port": str(i.listen_port or 0),
        "fwmark": str(i.fwmark or 0),
        "replace_peers": "true",
        "peers": [],
    }
    for p in c.peers:
        peer: dict = {
            "public_key": bytes(p.public_key).hex(),
            "replace_allowed_ips": "true",
            "allowed_ips": p.allowed_ips,
        }
        if p.preshared_key is not None:
            peer["preshared_key"] = p.preshared_key.to_bytes().hex()
        if p.endpoint is not None:
            host, port = resolve_endpoint(p.endpoint)
            peer["endpoint"] = (ipaddress.ip_address(host), port)
        if p.persistent_keepalive is not None:
            peer["persistent_keepalive_interval"] = str(p.persistent_keepalive)
        device["peers"].append(peer)
    return device


def ours(text: str) -> dict | None:
    try:
        return model_of_config(parse(text))
    except ConfigError:
        return None


# Where wg is looser, we reject rather than reinterpret the value: (file, what wg reads).
WG_LOOSER = [
    ("[Interface]\nListenPort = 70000\n", {"listen_port": str(70000 % 65536)}),  # truncated
    ("[Interface]\nListenPort = domain\n", {"listen_port": "53"}),  # from /etc/services
    ("[Interface]\nListenPort = +5\n", {"listen_port": "5"}),  # strtoul takes a sign
    (f"{P}Endpoint = 192.0.2.1:0\n", {"endpoint": endpoint_key("192.0.2.1:0")}),
    (f"{P}Endpoint = 192.0.2.1:65536\n", {"endpoint": endpoint_key("192.0.2.1:0")}),
    (f"{P}Endpoint = 192.0.2.1:domain\n", {"endpoint": endpoint_key("192.0.2.1:53")}),
    (f"{P}\n{P}", {"public_key": bytes(wgpy.PublicKey.from_base64(PUB)).hex()}),  # merged
]
NOT_ASKED_OF_WG = {
    IF + f"ListenPort = {BIG}",  # looser too (strtoul overflow)
    # wg would look these host names up in the DNS.
    P + "Endpoint = host:https",
    P + "Endpoint = bad!host:1",
    P + "Endpoint = fd00::zz:1",
    P + "Endpoint = []:1",
}
# Files wg reads exactly as we do: the same verdict and, if accepted, the same content.
AGREED = [
    parse(FULL).to_wg(),
    "[Interface]\nListenPort = 0051820\nFwMark = 010\n",
    "[Interface]\nFwMark = 0xAb\n",
    "[Interface]\nFwMark = off\n",
    "[Interface]\r\nListen Port = 5\r\n",
    "[Interface]\nListen\vPort\f= 5\n",
    f"[ interface ]\nprivatekey = {PRIV}\n[ PEER ]\nPUBLICKEY={PUB}\n",
    "[Interface]\nListenPort=1\n[Interface]\nListenPort=2\n",
    f"{P}AllowedIPs = 10.0.0.1/24, fd00::1/64\nAllowedIPs = 1.2.3.4\n",
    f"{P}AllowedIPs = 10.0.0.0/024, ::ffff:1.2.3.4/128\n",
    f"{P}AllowedIPs = 10.0.0.0 / 8 , 10.1.0.0/16\n",
    f"{P}Endpoint = fd00::1:51820\n",
    f"{P}Endpoint = [fe80::1%lo]:51820\n",
    f"{P}Endpoint = [192.0.2.1]:5\n",
    f"{P}Endpoint = localhost:51820\n",
    f"{P}PersistentKeepalive = Off\n",
    f"{P}PersistentKeepalive = 0\n",
    f"{P}PersistentKeepalive = 65535\n",
    f"[Peer]\nPublicKey = {'A' * 43}=\nPresharedKey = {'A' * 43}=\n",
    f"[Interface]\nPrivateKey = {'A' * 43}=\n",
    f"[Peer]\nPublicKey = {PUB[:10]}  {PUB[10:]}\n",
    *(
        text + "\n"
        for text, _, _ in ERRORS
        if text not in NOT_ASKED_OF_WG
        and text.rstrip("\n") not in {t.rstrip("\n") for t, _ in WG_LOOSER}
    ),
]


@pytest.mark.parametrize("text", AGREED)
def test_wg_setconf_reads_files_as_we_do(uapi, conf_dir, text):
    assert wg_setconf(uapi, conf_dir, text) == ours(text)


@pytest.mark.parametrize(("text", "wg_reads"), WG_LOOSER)
def test_where_wg_is_looser(uapi, conf_dir, text, wg_reads):
    got = wg_setconf(uapi, conf_dir, text)
    assert got is not None
    flat = {**got, **(got["peers"][-1] if got["peers"] else {})}
    assert {k: flat[k] for k in wg_reads} == wg_reads
    with pytest.raises(ConfigError):
        parse(text)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LOCAL_CONFIGS, st.data())
def test_wg_setconf_reads_our_output(uapi, conf_dir, c, data):
    assert wg_setconf(uapi, conf_dir, c.to_wg()) == model_of_config(c)
    assert wg_setconf(uapi, conf_dir, messy(c.to_wg(), data)) == model_of_config(c)


def test_wg_rejects_wg_quick_keys(uapi, conf_dir):
    assert wg_setconf(uapi, conf_dir, parse(FULL).to_wg_quick()) is None
    assert wg_setconf(uapi, conf_dir, parse(FULL).to_wg()) == model_of_config(parse(FULL))


def differential_settings(f):
    return settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )(f)


@differential_settings
@given(st.text(alphabet="0123456789abcdefxXoOfFnN+- ", max_size=12))
@example("off")
@example("OfF")
@example("0x")
@example("0x0")
@example("0xffffffff")
@example("0x100000000")
@example("4294967295")
@example("4294967296")
@example("0x-1")
@example("0x+1")
def test_fwmark_values_like_wg(uapi, conf_dir, value):
    text = f"[Interface]\nFwMark = {value}\n"
    assert wg_setconf(uapi, conf_dir, text) == ours(text)


@differential_settings
@given(st.text(alphabet="0123456789oOfFnN+- x", max_size=8))
@example("off")
@example("65535")
@example("65536")
@example("00065535")
def test_persistent_keepalive_values_like_wg(uapi, conf_dir, value):
    text = f"{P}PersistentKeepalive = {value}\n"
    assert wg_setconf(uapi, conf_dir, text) == ours(text)


@differential_settings
@given(st.text(alphabet="0123456789 ", max_size=7))
def test_listen_port_values_like_wg(uapi, conf_dir, value):
    text = f"[Interface]\nListenPort = {value}\n"
    digits = value.translate(str.maketrans("", "", " "))
    if digits and int(digits) > 65535:
        # glibc's getaddrinfo truncates the port to 16 bits; we refuse it.
        assert wg_setconf(uapi, conf_dir, text)["listen_port"] == str(int(digits) % 65536)
        assert ours(text) is None
    else:
        assert wg_setconf(uapi, conf_dir, text) == ours(text)


@differential_settings
@given(st.text(alphabet="0123456789abcdefABCDEF:./%, ", max_size=24))
@example("::ffff:1.2.3.4/128")
@example("::1.2.3.4")
@example("1::2:3:4:5:6:7")
@example("1:2:3:4:5:6:7:8:9")
@example("1:2:3:4:5:6:7::")
@example("::01.2.3.4")
@example("1.2.3.4/32/1")
@example("0:0:0:0:0:0:1.2.3.4")
@example("00000::1")
@example("10.0.0.0/0008")
def test_allowed_ips_values_like_wg(uapi, conf_dir, value):
    text = f"{P}AllowedIPs = {value}\n"
    assert wg_setconf(uapi, conf_dir, text) == ours(text)


@pytest.mark.parametrize(
    "key",
    [
        PUB,
        "A" * 43 + "=",
        PUB[:-2] + "B=",  # non-zero padding bits
        PUB[:-1],
        PUB + "=",
        PUB[:-1] + "A",
        PUB[:-2] + "*=",
        PUB[:22] + " " + PUB[22:],
    ],
)
def test_public_keys_like_wg(uapi, conf_dir, key):
    text = f"[Peer]\nPublicKey = {key}\n"
    assert wg_setconf(uapi, conf_dir, text) == ours(text)


def uapi_dump(c: Config) -> str:
    """A `get=1` answer describing `c`, as a WireGuard implementation gives it."""
    i = c.interface
    # Like the kernel and wireguard-go: no private_key line when there is none.
    lines = [f"private_key={i.private_key.to_bytes().hex()}"] if i.private_key else []
    lines += [f"listen_port={i.listen_port or 0}", f"fwmark={i.fwmark or 0}"]
    for p in c.peers:
        lines.append(f"public_key={bytes(p.public_key).hex()}")
        psk = p.preshared_key.to_bytes().hex() if p.preshared_key else "00" * 32
        lines.append(f"preshared_key={psk}")
        if p.endpoint is not None:
            lines.append(f"endpoint={p.endpoint}")
        lines.append(f"persistent_keepalive_interval={p.persistent_keepalive or 0}")
        lines += [f"allowed_ip={n}" for n in p.allowed_ips]
        lines += ["last_handshake_time_sec=0", "last_handshake_time_nsec=0"]
        lines += ["tx_bytes=0", "rx_bytes=0", "protocol_version=1"]
    return "\n".join([*lines, "errno=0", "", ""])


def showconf_shaped(c: Config) -> bool:
    # showconf leaves out zero values and resolves nothing.
    i = c.interface
    return (
        i.listen_port != 0
        and i.fwmark != 0
        and (i.private_key is None or i.private_key.to_bytes() != bytes(32))
        and all(
            p.persistent_keepalive != 0
            and (p.preshared_key is None or p.preshared_key.to_bytes() != bytes(32))
            and (p.endpoint is None or ":" in p.endpoint.host or p.endpoint.host[0].isdigit())
            for p in c.peers
        )
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(CONFIGS.filter(showconf_shaped))
@example(Config())
@example(parse(FULL.replace("PersistentKeepalive = off", "")))
# wg prints an IPv4-mapped prefix with a dotted tail: ::ffff:0.0.0.0/96.
@example(
    parse(
        FULL.replace("PersistentKeepalive = off", "").replace("fd42:42:42::2/128", "::ffff:0:0/96")
    )
)
def test_to_wg_is_what_wg_showconf_prints(uapi, c):
    uapi.get_reply = uapi_dump(c)
    result = uapi.wg("showconf")
    assert result.returncode == 0, result.stderr
    assert result.stdout == c.to_wg()


def wg_quick_strip(directory: Path, text: str) -> subprocess.CompletedProcess[str]:
    assert WG_QUICK is not None
    # wg-quick wants "<interface name>.conf", and warns about a world-readable file.
    path = directory / "wgcfgt0.conf"
    path.write_text(text)
    path.chmod(0o600)
    return subprocess.run(
        [WG_QUICK, "strip", str(path)], capture_output=True, text=True, timeout=20, check=False
    )


@needs_wg_quick
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(CONFIGS)
@example(parse(FULL))
def test_wg_quick_strip_of_our_file_is_our_to_wg(conf_dir, c):
    result = wg_quick_strip(conf_dir, c.to_wg_quick())
    assert result.returncode == 0, result.stderr
    # cmd_strip is `echo "$WG_CONFIG"`: the kept lines, plus echo's newline.
    assert result.stdout == c.to_wg() + "\n"


# Hand-written files: wg-quick must keep for wg exactly the lines we consider wg's.
STRIP_CASES = [
    FULL,
    "[interface]\naddress = 10.0.0.1/24\nSAVECONFIG = TRUE\nListenPort = 1\n",
    "[Interface]\nPostUp = echo a=b # c\nDNS = 1.1.1.1 example.com\n\tMTU\t=\t1400\t\n",
    f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB}\n[Interface]\nTable = off\n",
    "[Interface]\nSaveConfig = false\nTable =\nMTU =\nAddress =\n",
]


@needs_wg_quick
@pytest.mark.parametrize("text", STRIP_CASES)
def test_wg_quick_strip_keeps_what_we_call_wg(conf_dir, text):
    result = wg_quick_strip(conf_dir, text)
    assert result.returncode == 0, result.stderr
    ours_full = parse(text)
    theirs = parse(result.stdout)
    assert theirs.peers == ours_full.peers
    assert theirs.interface == InterfaceConfig(
        private_key=ours_full.interface.private_key,
        listen_port=ours_full.interface.listen_port,
        fwmark=ours_full.interface.fwmark,
    )


@needs_wg_quick
@pytest.mark.parametrize("value", ["yes", "", "1", "on"])
def test_wg_quick_and_we_reject_the_same_save_config(conf_dir, value):
    text = f"[Interface]\nSaveConfig = {value}\n"
    result = wg_quick_strip(conf_dir, text)
    assert result.returncode != 0
    assert "is neither true nor false" in result.stderr
    with pytest.raises(ConfigError, match="must be true or false"):
        parse(text)


@needs_wg_quick
def test_wg_quick_passes_keys_under_a_spaced_header_to_wg(conf_dir):
    # "[ Interface ]" hides MTU from wg-quick, which hands it to wg (which refuses it).
    result = wg_quick_strip(conf_dir, "[ Interface ]\nMTU = 1400\n")
    assert "MTU = 1400" in result.stdout
    with pytest.raises(ConfigError, match="wg-quick does not see MTU"):
        parse("[ Interface ]\nMTU = 1400\n")

"""`wgpy registry` against a real etcd on loopback: what it writes, its
one-line errors, and TLS with user authentication (the command and a
gateway's sync)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from etcd_server import EtcdServer, make_tls
from registry_support import NETWORK, RegistryFakeDevice, new_key, until
from wgpy.registry.config import RegistryConfigError, parse_etcd_url, parse_registry_url
from wgpy.registry.sync import RegistrySync


def wgpy_registry(
    etcd_url: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "wgpy", "registry", "--etcd", etcd_url, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, input=stdin)


def one_line_error(r: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert r.returncode == code, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def test_add_list_remove_and_errors(etcd: EtcdServer, tmp_path: Path) -> None:
    a, b = new_key().to_base64(), new_key().to_base64()
    r = wgpy_registry(
        etcd.url,
        NETWORK,
        "add-peer",
        a,
        "--allowed-ips",
        "10.0.0.2/32,fd00::2/128",
        "--endpoint",
        "192.0.2.1:51820",
        "--persistent-keepalive",
        "25",
    )
    assert r.returncode == 0 and "added" in r.stdout, r.stderr
    assert "belongs to peer " + a in one_line_error(
        wgpy_registry(etcd.url, NETWORK, "add-peer", b, "--allowed-ips", "10.0.0.2/32")
    )
    listed = json.loads(wgpy_registry(etcd.url, NETWORK, "list", "--json").stdout)
    assert listed == [
        {
            "public_key": a,
            "allowed_ips": ["10.0.0.2/32", "fd00::2/128"],
            "endpoint": "192.0.2.1:51820",
            "persistent_keepalive": 25,
        }
    ]
    # import: list --json's own format; one conflict refuses that peer only
    c = new_key().to_base64()
    bulk = json.dumps(
        [
            {"public_key": c, "allowed_ips": ["10.0.0.3/32"]},
            {"public_key": b, "allowed_ips": ["fd00::2/128"]},
        ]
    )
    r = wgpy_registry(etcd.url, NETWORK, "import", "-", stdin=bulk)
    assert r.returncode == 1 and "1 added" in r.stdout and "1 refused" in r.stdout, r
    assert wgpy_registry(etcd.url, NETWORK, "remove-peer", a).returncode == 0
    assert "no peer" in one_line_error(wgpy_registry(etcd.url, NETWORK, "remove-peer", a))
    text = wgpy_registry(etcd.url, NETWORK, "list").stdout
    assert c in text and a not in text
    # after removal, the allowed IP is free again
    assert (
        wgpy_registry(etcd.url, NETWORK, "add-peer", b, "--allowed-ips", "10.0.0.2/32").returncode
        == 0
    )
    for args, message in [
        (["add-peer", "nokey", "--allowed-ips", "10.0.0.9/32"], "not a public key"),
        (["add-peer", b, "--allowed-ips", "10.0.0.9/24"], "host bits"),
        (["add-peer", b, "--allowed-ips", "10.0.0.9/32", "--endpoint", "host:1"], "not an IP"),
        (
            ["add-peer", b, "--allowed-ips", "10.0.0.9/32", "--persistent-keepalive", "70000"],
            "0-65535",
        ),
        (
            ["add-peer", b, "--allowed-ips", "10.0.0.9/32", "--preshared-key-ref", "../x"],
            "file name",
        ),
    ]:
        assert message in one_line_error(wgpy_registry(etcd.url, NETWORK, *args))
    assert "required" in one_line_error(wgpy_registry(etcd.url, NETWORK, "add-peer", b), code=2)
    assert "network" in one_line_error(wgpy_registry(etcd.url, "../x", "list"), code=2)
    assert "127.0.0.1:1" in one_line_error(wgpy_registry("etcd://127.0.0.1:1", NETWORK, "list"))


def test_registry_urls() -> None:
    config = parse_registry_url(
        "etcds://gw@10.0.0.1,[fd00::1]:2400/net-1?cacert=/ca&password-file=/p"
    )
    assert config.target.endpoints == ("https://10.0.0.1:2379", "https://[fd00::1]:2400")
    assert (config.target.user, config.target.password_file) == ("gw", "/p")
    assert config.display() == "etcds://10.0.0.1:2379,[fd00::1]:2400/net-1"
    assert str(config.psk_dir) == "/etc/wgpy/psk/net-1"
    for bad, message in [
        ("etcd://h/", "names no network"),
        ("etcd://u:pw@h/n", "no password in the URL"),
        ("etcd://h/n?cacert=/ca", "need TLS"),
        ("etcd://h/n?bogus=1", "unknown option"),
        ("redis://h/n", "not an etcd URL"),
        ("etcd://h/n?user=u", "password-file"),
    ]:
        with pytest.raises(RegistryConfigError, match=message):
            parse_registry_url(bad)
    assert parse_etcd_url("http://h:1", cacert=None).endpoints == ("http://h:1",)


def test_tls_and_user_authentication(tmp_path: Path) -> None:
    """etcd with TLS (client certificates required) and users: the command
    and a gateway connect with the documented options; wrong or missing
    credentials are one clear line."""
    tls = make_tls(tmp_path)
    etcd = EtcdServer(tmp_path, tls=tls)
    password = tmp_path / "gw.password"
    password.write_text("gw-secret\n")
    wrong = tmp_path / "wrong.password"
    wrong.write_text("nope\n")
    try:
        etcd.start()
        etcd.etcdctl("user", "add", "root", "--new-user-password=root-secret")
        etcd.etcdctl("user", "grant-role", "root", "root")
        etcd.etcdctl("user", "add", "gw", "--new-user-password=gw-secret")
        etcd.etcdctl("role", "add", "gateway")
        etcd.etcdctl(
            "role", "grant-permission", "gateway", "--prefix=true", "readwrite", "/wgpy/networks/"
        )
        etcd.etcdctl("user", "grant-role", "gw", "gateway")
        etcd.etcdctl("auth", "enable")
        files = [
            "--cacert",
            str(tls.ca),
            "--cert",
            str(tls.client_cert),
            "--key",
            str(tls.client_key),
        ]
        auth = ["--user", "gw", "--password-file", str(password)]
        key = new_key()
        r = wgpy_registry(
            etcd.url,
            *files,
            *auth,
            NETWORK,
            "add-peer",
            key.to_base64(),
            "--allowed-ips",
            "10.12.0.1/32",
        )
        assert r.returncode == 0, r.stderr
        assert "user name is empty" in one_line_error(
            wgpy_registry(etcd.url, *files, NETWORK, "list")
        )
        bad = ["--user", "gw", "--password-file", str(wrong)]
        assert "authentication failed" in one_line_error(
            wgpy_registry(etcd.url, *files, *bad, NETWORK, "list")
        )
        assert "certificate" in one_line_error(wgpy_registry(etcd.url, *auth, NETWORK, "list"))
        for output in (r.stdout + r.stderr,):
            assert "gw-secret" not in output

        query = (
            f"?cacert={tls.ca}&cert={tls.client_cert}&key={tls.client_key}"
            f"&user=gw&password-file={password}"
        )
        config = parse_registry_url(f"{etcd.url}/{NETWORK}{query}")
        device = RegistryFakeDevice()

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                sync = RegistrySync(config, device, lambda _: None)
                await nursery.start(sync.run)
                await until(lambda: key in device.peers_by_key, timeout=10, what="peer over TLS")
                assert sync.report().url == f"etcds://127.0.0.1:{etcd.client_port}/{NETWORK}"
                nursery.cancel_scope.cancel()

        trio.run(main)
    finally:
        etcd.cleanup()


def test_daemon_refuses_a_bad_registry_url() -> None:
    """Checked before the daemon starts: one line, exit 1, nothing created."""
    for url, message in [("etcd://h", "names no network"), ("redis://h/n", "not an etcd URL")]:
        r = subprocess.run(
            [sys.executable, "-m", "wgpy", "--registry", url, "wgtestnone"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert message in one_line_error(r)

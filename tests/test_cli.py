"""The `wgpy` command: keys, errors a user can make, and wg-quick semantics
(`wgpy up`/`down`, and wg-quick itself with wgpy as its userspace implementation)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import wgpy
from netns import Namespace, NetnsLab, require_programs, require_tun, wait_until
from wgnet import INNER_V4, OUTER_V4, WIREGUARD_GO, Node, start_node

WGPY = [sys.executable, "-m", "wgpy"]


def run_wgpy(
    *args: str, input: str | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WGPY, *args], input=input, capture_output=True, text=True, timeout=60, check=False, **kw
    )


def assert_one_line_error(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_genkey_pubkey_genpsk_agree_with_wg() -> None:
    require_programs("wg")
    private = run_wgpy("genkey").stdout.strip()
    ours = run_wgpy("pubkey", input=private + "\n").stdout.strip()
    theirs = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True).stdout
    assert ours == theirs.strip()
    psk = run_wgpy("genpsk").stdout.strip()
    wgpy.PresharedKey.from_base64(psk)
    wg_key = subprocess.run(["wg", "genkey"], capture_output=True, text=True).stdout
    assert (
        run_wgpy("pubkey", input=wg_key).stdout.strip()
        == subprocess.run(
            ["wg", "pubkey"], input=wg_key, capture_output=True, text=True
        ).stdout.strip()
    )


def test_pubkey_rejects_garbage() -> None:
    r = run_wgpy("pubkey", input="not a key\n")
    assert_one_line_error(r)
    assert "pubkey" in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["up", "/nonexistent/wgx0.conf"],
        ["up", "bad name.conf"],
        ["down", "wgpynosuch0"],
        ["show", "wgpynosuch0"],
        ["frobnicate", "x", "y"],
        ["-f"],
        ["this-name-is-far-too-long-for-linux"],
    ],
)
def test_user_errors_are_one_line(args: list[str]) -> None:
    assert_one_line_error(run_wgpy(*args))


COMMANDS = ["genkey", "genpsk", "pubkey", "show", "metrics", "up", "down", "demo", "daemon"]
REPO = Path(__file__).parent.parent
SHARE = REPO / "packaging/wgpy.data/data/share"


@pytest.mark.parametrize("args", [["--help"], ["help"]] + [[c, "--help"] for c in COMMANDS])
def test_help_exits_0_with_usage_on_stdout(args: list[str]) -> None:
    r = run_wgpy(*args)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    command = args[0] if args[0] in COMMANDS else ""
    assert r.stdout.startswith(f"usage: wgpy {command}".rstrip()), r.stdout


def test_version_is_the_packages() -> None:
    from importlib.metadata import version

    for flag in ("--version", "-v"):
        r = run_wgpy(flag)
        assert (r.returncode, r.stdout) == (0, f"wgpy {version('wgpy')}\n")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["genkey", "extra"],
        ["show", "a", "b"],
        ["up"],
        ["-f"],
        ["frobnicate", "x", "y"],
        ["--metrics", "nonsense", "wg0"],
        ["daemon", "--listen-port", "99999", "wg0"],
        ["up", "--no-such-option", "wg0"],
    ],
)
def test_usage_errors_exit_2_in_one_line(args: list[str]) -> None:
    r = run_wgpy(*args)
    assert r.returncode == 2
    assert_one_line_error(r)
    assert "--help" in r.stderr, "says where the usage is"


def test_man_page_and_completion_are_generated_from_the_parser() -> None:
    pytest.importorskip("shtab")
    pytest.importorskip("argparse_manpage")
    r = subprocess.run([sys.executable, str(REPO / "scripts/gen-docs"), "--check"],
                       capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_man_page_renders_cleanly() -> None:
    require_programs("groff")
    page = SHARE / "man/man8/wgpy.8"
    r = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "LC_ALL": "C.UTF-8"})  # fmt: skip
    assert r.returncode == 0 and r.stderr == "", r.stderr
    text = page.read_text()
    assert text.startswith('.TH WGPY "8"')
    for command in COMMANDS:
        assert f"wgpy {command}" in text


@pytest.mark.parametrize(
    "words, expected",
    [(["wgpy", "u"], "up"), (["wgpy", "daemon", "--us"], "--user"), (["wgpy", "-"], "--version")],
)
def test_bash_completion_completes_commands_and_options(words: list[str], expected: str) -> None:
    require_programs("bash")
    line = " ".join(words)
    script = (
        f"source {SHARE / 'bash-completion/completions/wgpy'}\n"
        f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMP_LINE='{line}'; "
        f"COMP_POINT={len(line)}\n"
        f"_shtab_wgpy wgpy {words[-1]} {words[-2]}\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert expected in r.stdout.split(), r.stdout + r.stderr


def test_bad_config_names_file_and_line_and_leaves_nothing(tmp_path: Path) -> None:
    conf = tmp_path / "wgpybad0.conf"
    conf.write_text("[Interface]\nPrivateKey = nope\nListenPort = 51820\n")
    r = run_wgpy("up", str(conf))
    assert_one_line_error(r)
    assert f"{conf}:2" in r.stderr
    links = subprocess.run(["ip", "link", "show", "wgpybad0"], capture_output=True)
    assert links.returncode != 0, "no interface left behind"
    assert not Path("/var/run/wireguard/wgpybad0.sock").exists()


def test_missing_privileges_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root (to drop privileges) and setpriv")
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = dict(os.environ, HOME=str(tmp_path))
    for args in (["wgpynopriv0"], ["up", "wgpynopriv0"], ["demo"]):
        r = subprocess.run(
            [*drop, *WGPY, *args], capture_output=True, text=True, timeout=60, env=env, check=False
        )
        assert_one_line_error(r)
        assert "root" in r.stderr


def _full_config(key: wgpy.PrivateKey, peer: wgpy.PublicKey, endpoint: str, allowed: str) -> str:
    return (
        "[Interface]\n"
        f"PrivateKey = {key.to_base64()}\n"
        f"Address = {INNER_V4[1]}/24\n"
        "PostUp = echo up %i > /dev/null\n"
        "\n[Peer]\n"
        f"PublicKey = {peer.to_base64()}\n"
        f"Endpoint = {endpoint}\n"
        f"AllowedIPs = {allowed}\n"
    )


def _server_and_client_config(
    lab: NetnsLab, tmp_path: Path, allowed_ips: str
) -> tuple[Namespace, Node, str, Path]:
    """A wireguard-go server in one namespace, and in another a wg-quick file
    for a client of it (not brought up): (client namespace, server, iface, file)."""
    server_ns, client_ns = lab.namespace(), lab.namespace()
    lab.veth(server_ns, client_ns, [f"{OUTER_V4[0]}/24"], [f"{OUTER_V4[1]}/24"])
    server = start_node(lab, server_ns, WIREGUARD_GO, port=51820, addresses=[f"{INNER_V4[0]}/24"])
    key = wgpy.PrivateKey.generate()
    server.set_peer(key.public_key(), [f"{INNER_V4[1]}/32"])
    iface = lab.interface_name(client_ns, prefix="wgq")
    conf = tmp_path / f"{iface}.conf"
    conf.write_text(_full_config(key, server.public_key, f"{OUTER_V4[0]}:51820", allowed_ips))
    return client_ns, server, iface, conf


def _rules(ns_name: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns_name, "rule", "show"], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.parametrize("full_tunnel", [False, True], ids=["split", "full-tunnel"])
def test_wgpy_up_and_down_against_wireguard_go(
    netns_lab: NetnsLab, tmp_path: Path, full_tunnel: bool
) -> None:
    require_programs("wireguard-go", "wg", "ping")
    require_tun()
    allowed = "0.0.0.0/0, ::/0" if full_tunnel else f"{INNER_V4[0]}/32"
    client_ns, _server, iface, conf = _server_and_client_config(netns_lab, tmp_path, allowed)
    up = client_ns.run([*WGPY, "up", str(conf)], check=False)
    assert up.returncode == 0, up.stderr
    try:
        # A full tunnel keeps the endpoint reachable through the fwmark rules.
        assert (
            client_ns.run(["ping", "-c", "2", "-W", "2", INNER_V4[0]], check=False).returncode == 0
        )
        # The versioned JSON (docs/show-json.md), never with a key.
        out = client_ns.run([*WGPY, "show", iface, "--json"]).stdout
        document = json.loads(out)
        schema = json.loads((REPO / "docs/show.schema.json").read_text())
        jsonschema.validate(document, schema)
        assert (document["schema"], document["version"]) == ("wgpy-show", 1)
        assert "PrivateKey" not in out and conf.read_text().split()[3] not in out
        state = document["interfaces"][0]
        assert state["peers"][0]["endpoint"] == f"{OUTER_V4[0]}:51820"
        rules = _rules(client_ns.name)
        if full_tunnel:
            assert state["fwmark"] == 51820
            assert "not from all fwmark 0xca6c lookup 51820" in rules
            assert "suppress_prefixlength 0" in rules
        else:
            assert "51820" not in rules
    finally:
        down = client_ns.run([*WGPY, "down", str(conf)], check=False)
    assert down.returncode == 0, down.stderr
    assert not client_ns.link_exists(iface)
    assert not Path(f"/var/run/wireguard/{iface}.sock").exists()
    rules = _rules(client_ns.name)
    assert "51820" not in rules and "suppress_prefixlength" not in rules
    leftover = subprocess.run(["pgrep", "-f", f"wgpy {iface}"], capture_output=True)
    assert leftover.returncode != 0, "the daemon exited"


def test_wg_quick_with_wgpy_as_userspace_implementation(
    netns_lab: NetnsLab, tmp_path: Path
) -> None:
    require_programs("wireguard-go", "wg", "wg-quick", "ping")
    require_tun()
    if Path("/sys/module/wireguard").exists():
        pytest.skip("wg-quick uses the kernel module when it is loaded")
    wgpy_bin = shutil.which("wgpy")
    if wgpy_bin is None:
        pytest.skip("the wgpy command is not on PATH")
    client_ns, server, iface, conf = _server_and_client_config(
        netns_lab, tmp_path, f"{INNER_V4[0]}/32"
    )
    env = {"WG_QUICK_USERSPACE_IMPLEMENTATION": wgpy_bin}
    up = client_ns.run(["wg-quick", "up", str(conf)], check=False, env=env, timeout=60)
    assert up.returncode == 0, up.stderr
    try:
        assert (
            client_ns.run(["ping", "-c", "2", "-W", "2", INNER_V4[0]], check=False).returncode == 0
        )
        assert server.wg("show", server.iface, "latest-handshakes").split()[1] != "0"
    finally:
        down = client_ns.run(["wg-quick", "down", str(conf)], check=False, env=env, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not client_ns.link_exists(iface)
    # wg-quick only deletes the link; the daemon notices and removes its
    # socket on its own, as wireguard-go does: shortly after, not at once.
    sock = Path(f"/var/run/wireguard/{iface}.sock")
    wait_until(lambda: not sock.exists(), timeout=5, what="the daemon to remove its socket")


def _firewall(ns: Namespace, iface: str) -> dict[str, str]:
    """The interface's nftables tables (by family) and policy rules, as text."""
    state = {}
    for family in ("ip", "ip6"):
        r = ns.run(["nft", "list", "table", family, f"wg-quick-{iface}"], check=False)
        # The TUN interface's link-local address is random per creation.
        text = re.sub(r"fe80::[0-9a-f:]+", "fe80::(link-local)", r.stdout)
        state[f"nft {family}"] = text if r.returncode == 0 else ""
    for family in ("-4", "-6"):
        state[f"rule {family}"] = ns.run(["ip", family, "rule", "show"]).stdout
        table = ns.run(["ip", family, "route", "show", "table", "51820"], check=False)
        state[f"table {family}"] = table.stdout if table.returncode == 0 else ""
    return state


def test_full_tunnel_firewall_equals_wg_quicks(netns_lab: NetnsLab, tmp_path: Path) -> None:
    """`wgpy up` of a full-tunnel file installs exactly the nftables rules
    (anti-spoofing, connmark) and policy rules that wg-quick itself installs
    for the same file and interface, and `down` removes them."""
    require_programs("wireguard-go", "wg", "wg-quick", "nft")
    require_tun()
    wgpy_bin = shutil.which("wgpy")
    if wgpy_bin is None:
        pytest.skip("the wgpy command is not on PATH")
    client_ns, _server, iface, conf = _server_and_client_config(
        netns_lab, tmp_path, "0.0.0.0/0, ::/0"
    )
    before = _firewall(client_ns, iface)
    env = {"WG_QUICK_USERSPACE_IMPLEMENTATION": wgpy_bin}
    for up, down in (
        (["wg-quick", "up", str(conf)], ["wg-quick", "down", str(conf)]),
        ([*WGPY, "up", str(conf)], [*WGPY, "down", str(conf)]),
    ):
        r = client_ns.run(up, check=False, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        try:
            installed = _firewall(client_ns, iface)
        finally:
            r = client_ns.run(down, check=False, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert _firewall(client_ns, iface) == before, f"{up[0]} down left rules behind"
        if up[0] == "wg-quick":
            wg_quicks = installed
        else:
            assert installed["nft ip"] and installed["nft ip6"]
            assert f'iifname != "{iface}" ip daddr {INNER_V4[1]}' in installed["nft ip"]
            for key in wg_quicks:
                assert installed[key] == wg_quicks[key], key


def test_forward_and_proxy_refuse_a_send_buffer_out_of_range(tmp_path: Path) -> None:
    """The stack's tuning is checked once, where the stack is made: a value
    out of range is one line and status 1, for both rootless commands."""
    conf = tmp_path / "rootless.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {wgpy.PrivateKey.generate().to_base64()}\n"
        "Address = 10.80.0.1/24\n"
    )
    for command, listen in (
        ("forward", ["--tcp", "127.0.0.1:0=10.80.0.2:80"]),
        ("proxy", ["--socks5", "127.0.0.1:0"]),
    ):
        r = run_wgpy(command, str(conf), *listen, "--tcp-send-buffer", "10")
        assert_one_line_error(r)
        assert r.returncode == 1 and "tcp_send_buffer" in r.stderr, r.stderr

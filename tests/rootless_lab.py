"""A rootless client and a far side, in two namespaces joined by a veth pair.

- The far side is a WireGuard node (wireguard-go here; the kernel module in
  test_kernel_interop.py) at 10.200.0.1 / fd00:200::1 in the tunnel, with
  an HTTP server, a DNS server and an echo server on its tunnel address.
- The client side runs `wgpy proxy` or `wgpy forward` from a wg-quick file,
  as user `nobody` with no capabilities (setpriv), in its own namespace.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import wgpy
from netns import BackgroundProcess, Namespace, NetnsLab, wait_until
from nobody import nobody_python
from wgnet import INNER_V4, INNER_V6, OUTER_V4, OUTER_V6, WIREGUARD_GO, Node, start_node

HERE = Path(__file__).parent
FAR_NAME = "far.wg.test"
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all"]


def listening(log: str, command: str) -> bool:
    """Whether `wgpy COMMAND` printed its "listening" line (stdout). Its log
    lines (stderr, the same file here) share the prefix, so the line is told
    by its shape: the proxy's ends with the tunnel's addresses, the
    forward's names its rules with arrows."""
    prefix = f"wgpy {command}: "
    return any(
        line.startswith(prefix) and ("(tunnel " in line or " -> " in line)
        for line in log.splitlines()
    )


def spawn_as_nobody(ns: Namespace, command: str, config: Path, *args: str) -> BackgroundProcess:
    """`python -m wgpy COMMAND CONFIG ARGS` as nobody in `ns`; returns once
    it printed its "listening" line."""
    python, env = nobody_python()
    argv = [*AS_NOBODY, python, "-m", "wgpy", command, str(config), *args]
    env["LOG_LEVEL"] = os.environ.get("WGPY_TEST_LOG_LEVEL", "verbose")
    process = ns.spawn(argv, env=env)
    wait_until(
        lambda: listening(process.log(), command) or not process.alive(),
        timeout=20,
        what=f"wgpy {command} to listen",
    )
    assert process.alive(), process.log()
    return process


@dataclass
class RootlessLab:
    lab: NetnsLab
    client_ns: Namespace
    far_ns: Namespace
    far: Node
    client_key: wgpy.PrivateKey
    config_dir: Path

    def write_config(self, name: str = "client.conf") -> Path:
        """The client's wg-quick file, readable by nobody only."""
        text = f"""[Interface]
PrivateKey = {self.client_key.to_base64()}
Address = {INNER_V4[1]}/24, {INNER_V6[1]}/64
DNS = {INNER_V4[0]}

[Peer]
PublicKey = {self.far.public_key.to_base64()}
Endpoint = {OUTER_V4[0]}:{self.far.port}
AllowedIPs = 10.200.0.0/24, fd00:200::/64
"""
        path = self.config_dir / name
        path.write_text(text)
        os.chmod(path, 0o600)
        shutil.chown(path, "nobody", "nogroup")
        return path

    def run_as_nobody(self, command: str, *args: str) -> BackgroundProcess:
        """`python -m wgpy COMMAND CONFIG ARGS` as nobody in the client
        namespace; returns once it printed its "listening" line."""
        return spawn_as_nobody(self.client_ns, command, self.write_config(), *args)

    def serve_far(self, *argv: str) -> BackgroundProcess:
        """A far-side server (tests/rootless_servers.py or any command)."""
        process = self.far_ns.spawn(list(argv))
        wait_until(
            lambda: (
                any(m in process.log() for m in ("ready", "Serving HTTP", "listening"))
                or not process.alive()
            ),
            timeout=20,
            what=f"{argv} to be ready",
        )
        assert process.alive(), process.log()
        return process


@contextmanager
def nobody_config(text: str) -> Iterator[Path]:
    """A wg-quick file only nobody can read, in a directory it can reach."""
    directory = Path(tempfile.mkdtemp(prefix="wgpy-rootless-"))
    os.chmod(directory, 0o755)
    path = directory / "client.conf"
    try:
        path.write_text(text)
        os.chmod(path, 0o600)
        shutil.chown(path, "nobody", "nogroup")
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def rootless_lab(lab: NetnsLab, far_impl: str = WIREGUARD_GO) -> Iterator[RootlessLab]:
    client_ns, far_ns = lab.namespace(), lab.namespace()
    lab.veth(
        far_ns,
        client_ns,
        [f"{OUTER_V4[0]}/24", f"{OUTER_V6[0]}/64"],
        [f"{OUTER_V4[1]}/24", f"{OUTER_V6[1]}/64"],
    )
    far = start_node(
        lab,
        far_ns,
        far_impl,
        port=51820,
        addresses=[f"{INNER_V4[0]}/24", f"{INNER_V6[0]}/64"],
        log_level="error",
    )
    client_key = wgpy.PrivateKey.generate()
    far.set_peer(client_key.public_key(), [f"{INNER_V4[1]}/32", f"{INNER_V6[1]}/128"])
    config_dir = Path(tempfile.mkdtemp(prefix="wgpy-rootless-"))
    os.chmod(config_dir, 0o755)
    try:
        yield RootlessLab(lab, client_ns, far_ns, far, client_key, config_dir)
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)


def http_root(lab: RootlessLab, size: int) -> Path:
    """A directory, served by the far side, with `blob` of `size` random bytes and `small`."""
    root = lab.config_dir / "www"
    root.mkdir(exist_ok=True)
    with open(root / "blob", "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(size >> 20):
            f.write(chunk)
    (root / "small").write_text("hello through the tunnel\n")
    return root


def serve_http(lab: RootlessLab, root: Path, port: int = 8000) -> BackgroundProcess:
    return lab.serve_far(
        sys.executable,
        "-m",
        "http.server",
        "--bind",
        INNER_V4[0],
        "--directory",
        str(root),
        str(port),
    )


def serve_dns(lab: RootlessLab) -> BackgroundProcess:
    return lab.serve_far(
        sys.executable,
        str(HERE / "rootless_servers.py"),
        "dns",
        INNER_V4[0],
        f"{FAR_NAME}={INNER_V4[0]}",
    )


def serve_echo(lab: RootlessLab, port: int = 7) -> BackgroundProcess:
    return lab.serve_far(
        sys.executable, str(HERE / "rootless_servers.py"), "echo", f"{INNER_V4[0]}:{port}"
    )

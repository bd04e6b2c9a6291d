"""A real etcd (Debian's etcd-server) for one test.

`EtcdServer` starts etcd with its own data directory on a loopback address
(free ports) or on an address inside a network namespace, waits until it
answers, and can be stopped and started again on the same data (an outage).
`cleanup()` stops it (SIGTERM, then SIGKILL) and removes its data, whatever
the test did; the process also gets SIGTERM if the test process dies.
Optional TLS (server certificate, client certificates required) from
`make_tls`, which writes a throwaway CA with the `cryptography` package.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from netns import Namespace, _terminate_with_parent, require_programs, wait_until

START_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


class EtcdServer:
    def __init__(
        self,
        work_dir: Path,
        *,
        host: str = "127.0.0.1",
        ns: Namespace | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        require_programs("etcd", "etcdctl")
        self.host = host
        self.ns = ns
        self.tls = tls
        in_loopback = ns is None
        self.client_port = free_port() if in_loopback else 2379
        self.peer_port = free_port() if in_loopback else 2380
        self.data_dir = work_dir / f"etcd-{self.client_port}"
        self.log_path = work_dir / f"etcd-{self.client_port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """For `wgpy registry --etcd` (etcd:// or etcds://)."""
        return f"{'etcds' if self.tls else 'etcd'}://{self.host}:{self.client_port}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    def _argv(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        argv = [
            "etcd",
            "--name=wgpyt",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.http_url}",
            f"--advertise-client-urls={self.http_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=wgpyt={peer}",
            "--logger=zap",
            "--log-level=warn",
        ]
        if self.tls:
            argv += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        return self.ns.argv(argv) if self.ns else argv

    def etcdctl(self, *args: str) -> str:
        r = self.etcdctl_run(*args)
        if r.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def etcdctl_run(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = ["etcdctl", f"--endpoints={self.http_url}", "--command-timeout=3s"]
        if self.tls:
            argv += [
                f"--cacert={self.tls.ca}",
                f"--cert={self.tls.client_cert}",
                f"--key={self.tls.client_key}",
            ]
        argv += args
        argv = self.ns.argv(argv) if self.ns else argv
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, env=_etcdctl_env())

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
        wait_until(self._healthy, timeout=START_TIMEOUT, what="etcd to answer", interval=0.1)

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"etcd exited:\n{self.log()}")
        return self.etcdctl_run("endpoint", "health").returncode == 0

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def revision(self) -> int:
        out = self.etcdctl("endpoint", "status", "-w", "json")
        return int(json.loads(out)[0]["Status"]["header"]["revision"])


def _etcdctl_env() -> dict[str, str]:
    return {**os.environ, "ETCDCTL_API": "3"}


def make_tls(directory: Path, host: str = "127.0.0.1") -> TlsFiles:
    """A CA, a server certificate for `host` and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        if not cn:  # etcd's JSON gateway refuses client certificates with a CN
            return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wgpy tests")])
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(path: Path, data: bytes) -> Path:
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("wgpy test CA"))
        .issuer_name(name("wgpy test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(cn: str, usage: list[x509.ObjectIdentifier], san: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if san:
            ip = x509.IPAddress(ipaddress.ip_address(host))
            builder = builder.add_extension(x509.SubjectAlternativeName([ip]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)

    # etcd's JSON gateway dials etcd's own gRPC with the server certificate:
    # it needs the client usage too.
    server_usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    server_cert, server_key = issue(host, server_usage, True)
    client_cert, client_key = issue("", [ExtendedKeyUsageOID.CLIENT_AUTH], False)
    return TlsFiles(
        write(directory / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        write(directory / "server.pem", server_cert),
        write(directory / "server-key.pem", server_key),
        write(directory / "client.pem", client_cert),
        write(directory / "client-key.pem", client_key),
    )


def wait_for(predicate, *, timeout: float, what: str) -> float:
    """Polls `predicate`; returns the seconds it took."""
    start = time.monotonic()
    wait_until(predicate, timeout=timeout, what=what, interval=0.05)
    return time.monotonic() - start

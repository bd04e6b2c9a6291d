"""A WireGuard peer scripted by a test: the sans-I/O API over a plain UDP socket.

The socket lives in a namespace of the test's lab; everything the peer does is
an explicit call, so a test can replay, delay, reorder or forge messages and
see exactly what the implementation under test sends back (and from which
address: `receive` returns the datagram's source).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import wgpy
from netns import Namespace

Address = tuple[str, int]
STEP_TIMEOUT = 5.0
MTU = 1420


def receive(
    sock: socket.socket, deadline: float, wanted: Callable[[bytes, Address], bool], what: str
) -> tuple[bytes, Address]:
    """The first datagram for which `wanted` is true, before `deadline`."""
    skipped: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {what}; skipped {skipped[:8]!r}")
        sock.settimeout(remaining)
        try:
            data, source = sock.recvfrom(65535)
        except TimeoutError:
            continue
        address = (source[0], source[1])
        if wanted(data, address):
            return data, address
        skipped.append(data)


def of_type(kind: int, source: Address | None = None) -> Callable[[bytes, Address], bool]:
    """A `receive` filter: WireGuard messages of `kind` (from `source`, if given)."""

    def check(data: bytes, address: Address) -> bool:
        try:
            ok = wgpy.message_type(data) == kind
        except wgpy.ProtocolError:
            return False
        return ok and (source is None or address == source)

    return check


@dataclass
class ScriptedPeer:
    """One WireGuard identity with a UDP socket bound in `ns`."""

    ns: Namespace
    sock: socket.socket
    private_key: wgpy.PrivateKey = field(default_factory=wgpy.PrivateKey.generate)
    session: wgpy.Session | None = None

    @classmethod
    def bind(cls, ns: Namespace, address: str, port: int = 0) -> ScriptedPeer:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = ns.socket(family, socket.SOCK_DGRAM)
        sock.bind((address, port))
        return cls(ns, sock)

    @property
    def public_key(self) -> wgpy.PublicKey:
        return self.private_key.public_key()

    @property
    def address(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def receive(
        self,
        wanted: Callable[[bytes, Address], bool],
        what: str,
        timeout: float = STEP_TIMEOUT,
    ) -> tuple[bytes, Address]:
        return receive(self.sock, time.monotonic() + timeout, wanted, what)

    def nothing_arrives(self, wanted: Callable[[bytes, Address], bool], seconds: float) -> bool:
        """True if no datagram `wanted` arrives within `seconds`."""
        try:
            self.receive(wanted, "nothing", timeout=seconds)
        except AssertionError:
            return True
        return False

    # --- handshakes -------------------------------------------------------------------

    def handshake_with(
        self, remote: wgpy.PublicKey, psk: wgpy.PresharedKey | None = None
    ) -> wgpy.Handshake:
        return wgpy.Handshake(self.private_key, remote, psk)

    def initiate(
        self, remote: wgpy.PublicKey, to: Address, *, timestamp: bytes | None = None
    ) -> tuple[wgpy.Handshake, bytes]:
        """Sends an initiation to `to`; returns the handshake and the message."""
        handshake = self.handshake_with(remote)
        message = handshake.create_initiation(timestamp=timestamp)
        self.sock.sendto(message, to)
        return handshake, message

    def complete(
        self, handshake: wgpy.Handshake, *, timeout: float = STEP_TIMEOUT
    ) -> tuple[wgpy.Session, Address]:
        """Waits for the response to `handshake`'s initiation; returns the
        session (also kept as `self.session`) and where the response came from."""
        response, source = self.receive(of_type(wgpy.MESSAGE_RESPONSE), "a response", timeout)
        self.session = handshake.consume_response(response)
        return self.session, source

    def respond(self, remote: wgpy.PublicKey, initiation: bytes, to: Address) -> wgpy.Session:
        """Answers an initiation from `remote`; the session waits for our first
        data packet's confirmation on the other side, as a responder's does."""
        opened = wgpy.open_initiation(self.private_key, initiation)
        assert opened.peer_public_key == remote
        response, session = self.handshake_with(remote).respond(opened)
        self.sock.sendto(response, to)
        self.session = session
        return session

    # --- transport --------------------------------------------------------------------

    def send_packet(self, packet: bytes, to: Address, *, via: socket.socket | None = None) -> None:
        assert self.session is not None, "no session yet"
        (via or self.sock).sendto(self.session.encrypt(packet, MTU), to)

    def receive_plaintext(
        self, wanted: Callable[[bytes], bool], what: str, timeout: float = STEP_TIMEOUT
    ) -> tuple[bytes, Address]:
        """Decrypts transport messages until a plaintext (padding included;
        b"" for a keepalive) is `wanted`; returns it and the datagram's source."""
        assert self.session is not None, "no session yet"
        session = self.session
        deadline = time.monotonic() + timeout
        seen: list[bytes] = []
        while True:
            message, source = receive(
                self.sock, deadline, of_type(wgpy.MESSAGE_TRANSPORT), f"{what} (saw {seen[:4]!r})"
            )
            try:
                plaintext = session.decrypt(message)
            except wgpy.ProtocolError:
                continue  # another session's message
            if wanted(plaintext):
                return plaintext, source
            seen.append(plaintext[:40])

    def receive_inner(
        self, wanted: Callable[[bytes], bool], what: str, timeout: float = STEP_TIMEOUT
    ) -> tuple[bytes, Address]:
        """`receive_plaintext` for IP packets, the padding checked and removed."""
        found: list[bytes] = []

        def inner(plaintext: bytes) -> bool:
            length = wgpy.inner_packet_len(plaintext)
            if not plaintext or length is None:
                return False
            assert plaintext[length:] == bytes(len(plaintext) - length), "non-zero padding"
            if wanted(plaintext[:length]):
                found.append(plaintext[:length])
                return True
            return False

        _, source = self.receive_plaintext(inner, what, timeout)
        return found[0], source

"""Drives wgpy through complete handshakes whose inputs are all known, so the
transport keys can also be computed independently by tests/wgref.py."""

from __future__ import annotations

import os
from dataclasses import dataclass

import wgpy
import wgref


@dataclass
class Pair:
    initiator: wgpy.Handshake
    responder: wgpy.Handshake
    i_session: wgpy.Session
    r_session: wgpy.Session
    reference: wgref.ReferenceHandshake
    i_static: wgpy.PrivateKey
    r_static: wgpy.PrivateKey
    initiation: bytes
    response: bytes


@dataclass
class Inputs:
    i_static: wgpy.PrivateKey
    r_static: wgpy.PrivateKey
    i_ephemeral: wgpy.PrivateKey
    r_ephemeral: wgpy.PrivateKey
    i_index: int
    r_index: int
    timestamp: bytes
    psk: wgpy.PresharedKey | None

    @classmethod
    def random(cls, psk: wgpy.PresharedKey | None = None) -> Inputs:
        return cls(
            wgpy.PrivateKey.generate(),
            wgpy.PrivateKey.generate(),
            wgpy.PrivateKey.generate(),
            wgpy.PrivateKey.generate(),
            int.from_bytes(os.urandom(4), "little"),
            int.from_bytes(os.urandom(4), "little"),
            wgref.tai64n(1_700_000_000 + int.from_bytes(os.urandom(2), "little")),
            psk,
        )


def establish(
    inputs: Inputs | None = None,
    *,
    clock: wgpy.ManualClock | None = None,
    psk: wgpy.PresharedKey | None = None,
) -> Pair:
    inp = inputs if inputs is not None else Inputs.random(psk)
    initiator = wgpy.Handshake(inp.i_static, inp.r_static.public_key(), inp.psk, clock=clock)
    responder = wgpy.Handshake(inp.r_static, inp.i_static.public_key(), inp.psk, clock=clock)
    init = initiator.create_initiation(
        sender_index=inp.i_index, ephemeral=inp.i_ephemeral, timestamp=inp.timestamp
    )
    response, r_session = responder.respond(
        wgpy.open_initiation(inp.r_static, init),
        sender_index=inp.r_index,
        ephemeral=inp.r_ephemeral,
    )
    i_session = initiator.consume_response(response)
    ref = wgref.handshake(
        initiator_static=inp.i_static.to_bytes(),
        responder_static=inp.r_static.to_bytes(),
        initiator_ephemeral=inp.i_ephemeral.to_bytes(),
        responder_ephemeral=inp.r_ephemeral.to_bytes(),
        initiator_index=inp.i_index,
        responder_index=inp.r_index,
        timestamp=inp.timestamp,
        psk=inp.psk.to_bytes() if inp.psk is not None else None,
    )
    return Pair(
        initiator,
        responder,
        i_session,
        r_session,
        ref,
        inp.i_static,
        inp.r_static,
        bytes(init),
        bytes(response),
    )

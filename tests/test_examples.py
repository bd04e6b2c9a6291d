"""The README's embedding example runs and does what it says."""

from __future__ import annotations

import sys
from pathlib import Path

from netns import NetnsLab, require_tun

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embed.py"


def test_embedding_example(netns_lab: NetnsLab) -> None:
    require_tun()
    ns = netns_lab.namespace()
    out = ns.run([sys.executable, str(EXAMPLE)], timeout=60).stdout
    assert "peer: handshake done" in out
    assert "device event: handshake_completed" in out
    assert "ICMP type 0 (0 = echo reply)" in out

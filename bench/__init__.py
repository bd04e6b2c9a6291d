"""wgpy's network benchmark: `python3 -m bench` (see bench/README.md).

The modules each do one job: topology (the configurations, built in network
namespaces), measure (one iperf3/ping/probe measurement), cpu (/proc
accounting and the busy check), handshake, memory, stats, report (medians,
ratios, targets, Markdown and JSON), run (the interleaved run), cli.

The namespace and daemon helpers are the test suite's (tests/netns.py,
tests/wgnet.py), so the benchmark builds exactly what the tests build; the
tests directory is put on the import path here, before any submodule
imports them.
"""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)

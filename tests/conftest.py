"""Shared pytest fixtures, and the property tests' randomness.

Property tests (hypothesis) draw random examples locally, so every run can
find something new, and a fixed, derandomized sequence in CI (CI set in the
environment, as .ci/run does), so a CI run is reproducible: a failure there
fails the same way every time.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from netns import NetnsLab, remove_stale_namespaces, require_root_netns

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture
def netns_lab(tmp_path: Path) -> Iterator[NetnsLab]:
    """A `NetnsLab` whose namespaces, links, processes, sockets and UAPI sockets
    are removed after the test, whether it passed, failed or errored.

    Skips the test unless it runs as root with working `ip netns` and setns(2).
    """
    require_root_netns()
    remove_stale_namespaces()
    lab = NetnsLab(tmp_path)
    try:
        yield lab
    finally:
        try:
            logs = lab.logs()
            if logs:
                print(logs)  # pytest shows this only for a failed test
        finally:
            lab.cleanup()

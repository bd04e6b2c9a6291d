"""Shared pytest fixtures."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import NetnsLab, remove_stale_namespaces, require_root_netns


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

"""Running a host command to completion: the one helper shared by the
interop package and the test suite's namespace helpers (tests/netns.py)."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence


def run_command(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    error: type[Exception] = RuntimeError,
) -> subprocess.CompletedProcess[str]:
    """Runs `argv` with a timeout and no stdin, capturing text output; with
    `check`, a non-zero exit raises `error` with the command and its output."""
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and result.returncode != 0:
        raise error(
            f"{shlex.join(argv)} exited {result.returncode}\n"
            f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
        )
    return result

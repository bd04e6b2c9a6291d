"""A Python the user `nobody` can run wgpy with.

Tests run wgpy as `nobody` (setpriv) to show it needs no privileges. The
interpreter and packages running the tests may live where nobody cannot
read them (a pyenv under /root, mode 0700). So, once per test session:

- wgpy as installed here (the wheel, or an editable checkout) and every
  distribution it requires, resolved from the installed metadata, are
  copied into a directory anyone can read (nothing is downloaded: the same
  versions the tests use);
- the interpreter is the first of this one and /usr/bin/python3 that, run
  as nobody with PYTHONPATH set to that directory, imports wgpy._core.

`nobody_python()` gives the interpreter and the environment to add.
"""

from __future__ import annotations

import atexit
import functools
import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import wgpy

SETPRIV_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _requirements(name: str) -> list[str]:
    """The distributions `name` needs at run time (no extras)."""
    out = []
    for req in metadata.requires(name) or []:
        if "extra ==" in req:
            continue
        out.append(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
    return out


def _closure(name: str) -> list[metadata.Distribution]:
    """`name`'s requirements, theirs, and so on (wgpy itself left out)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = _requirements(name)
    while todo:
        dist_name = todo.pop()
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            continue  # an optional platform dependency
        key = dist.metadata["Name"].lower()
        if key not in seen:
            seen[key] = dist
            todo += _requirements(dist_name)
    return list(seen.values())


def _copy_distribution(dist: metadata.Distribution, target: Path) -> None:
    for file in dist.files or []:
        if ".." in file.parts or file.suffix == ".pyc":
            continue  # scripts installed elsewhere; caches
        source = Path(str(dist.locate_file(file)))
        if source.is_file():
            destination = target / file
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


def _populate(target: Path) -> None:
    shutil.copytree(
        Path(wgpy.__file__).parent, target / "wgpy", ignore=shutil.ignore_patterns("__pycache__")
    )
    for dist in _closure("wgpy"):
        _copy_distribution(dist, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _works(python: str, env: dict[str, str]) -> bool:
    probe = [*SETPRIV_NOBODY, python, "-c", "import wgpy._core, trio, pyroute2"]
    r = subprocess.run(probe, env={**os.environ, **env}, capture_output=True, timeout=60)
    return r.returncode == 0


@functools.cache
def nobody_python() -> tuple[str, dict[str, str]]:
    """(interpreter, environment additions) for running wgpy as nobody."""
    target = Path(tempfile.mkdtemp(prefix="wgpy-nobody-"))
    atexit.register(shutil.rmtree, target, True)
    target.chmod(0o755)
    _populate(target)
    env = {"PYTHONPATH": str(target), "PYTHONDONTWRITEBYTECODE": "1"}
    for python in (sys.executable, "/usr/bin/python3"):
        if Path(python).exists() and _works(python, env):
            return python, env
    raise RuntimeError(f"no Python that user nobody can run wgpy with (tried {sys.executable})")

"""The release artifacts of scripts/build-wheels: the manylinux abi3 wheel
installs into a fresh virtualenv and runs with no Rust toolchain or C
compiler on PATH, `auditwheel show` accepts it, and the sdist carries what
a build from source needs.

The wheel is the one scripts/test built (WGPY_WHEEL), else the newest in
dist/ for this version; without one the tests skip (run scripts/build-wheels).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import venv
from importlib.metadata import version
from pathlib import Path

import pytest
import wgpy
from netns import require_root_netns

REPO = Path(__file__).parent.parent
VERSION = version("wgpy")
TOOLS = ("ip", "ping")  # what `wgpy demo` runs, besides Python
COMPILERS = ("cargo", "rustc", "cc", "gcc", "clang", "c++", "zig", "maturin")


def artifact(pattern: str) -> Path:
    if pattern.endswith(".whl") and os.environ.get("WGPY_WHEEL"):
        return Path(os.environ["WGPY_WHEEL"])
    found = sorted((REPO / "dist").glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        pytest.skip(f"no dist/{pattern}: run scripts/build-wheels")
    return found[-1]


def wheel() -> Path:
    return artifact(f"wgpy-{VERSION}-cp311-abi3-manylinux_2_28_x86_64.whl")


def test_auditwheel_accepts_the_wheel() -> None:
    pytest.importorskip("auditwheel")
    r = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel())],
                       capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert 'is consistent with the following platform tag: "manylinux_2_28_x86_64"' in text


def test_sdist_has_what_a_source_build_needs() -> None:
    sdist = artifact(f"wgpy-{VERSION}.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("LICENSE", "README.md", "pyproject.toml", "Cargo.toml", "Cargo.lock",
                   "rust/src/lib.rs", "python/wgpy/cli.py", "python/wgpy/_core.pyi",
                   "packaging/wgpy.data/data/share/man/man8/wgpy.8"):  # fmt: skip
        assert needed in names, needed
    assert not any(n.startswith("dist/") for n in names)


def _toolless_path(tmp_path: Path, env_dir: Path) -> str:
    """The venv's bin and a directory with only the tools the demo runs."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, f"{tool} is missing"
        (tools / tool).symlink_to(found)
    path = f"{env_dir / 'bin'}:{tools}"
    for compiler in COMPILERS:
        assert shutil.which(compiler, path=path) is None, compiler
    return path


def test_wheel_installs_and_runs_without_a_toolchain(tmp_path: Path) -> None:
    require_root_netns()  # the demo makes namespaces
    built = wheel()
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = str(env_dir / "bin/python")
    path = _toolless_path(tmp_path, env_dir)
    env = {"PATH": path, "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    # Binary packages only: nothing, wgpy's dependencies included, is compiled.
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--only-binary=:all:", str(built)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr

    def wgpy_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(env_dir / "bin/wgpy"), *args], capture_output=True,
                              text=True, timeout=120, env=env, check=False)  # fmt: skip

    assert wgpy_cli("--version").stdout == f"wgpy {VERSION}\n"
    key = wgpy_cli("genkey").stdout.strip()
    wgpy.PrivateKey.from_base64(key)  # a valid key
    demo = wgpy_cli("demo")
    assert demo.returncode == 0, demo.stderr
    assert "0% loss" in demo.stdout, demo.stdout
    # The data files land under the prefix: man page, completion, units.
    for data in (
        "share/man/man8/wgpy.8",
        "share/bash-completion/completions/wgpy",
        "lib/systemd/system/wgpy@.service",
        "lib/systemd/system/wgpy-quick@.service",
    ):
        assert (env_dir / data).is_file(), data

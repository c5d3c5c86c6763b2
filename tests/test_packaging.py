"""Packaging: one version, a torch requirement the build can keep, a clear stop without torch, and a
source distribution holding what a build needs. (Installing that sdist in a fresh venv is
`make sdist-check`, run by CI: too slow for every test run.)"""
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
from importlib import metadata
from pathlib import Path

import torch

import twoway_fast

ROOT = Path(__file__).resolve().parent.parent
# setup.py run as if torch were absent (an isolated build environment).


def installed():
    """The installed distribution's metadata (not a source tree's *.egg-info that may come first on sys.path)."""
    return next(metadata.distributions(name="twoway_fast", path=[sysconfig.get_paths()["purelib"]]))


WITHOUT_TORCH = ("import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', *sys.argv[1:]]; "
                 "exec(compile(open('setup.py').read(), 'setup.py', 'exec'), {'__file__': 'setup.py', '__name__': '__main__'})")


def test_one_version_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "twoway_fast._version.__version__"}
    assert installed().version == twoway_fast.__version__


def test_installed_package_requires_the_torch_it_was_built_against():
    from twoway_fast import _extension

    requires = installed().requires
    assert _extension.EXTENSION is not None and f"torch=={torch.__version__.split('+')[0]}" in requires, requires


def test_build_without_torch_stops_at_once_naming_no_build_isolation():
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "bdist_wheel"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "pip install --no-build-isolation" in result.stderr and "Traceback" not in result.stderr


def test_metadata_without_torch_stops_too():
    """pip asks for metadata first: failing there keeps it from resolving (and downloading) a torch."""
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "egg_info"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "--no-build-isolation" in result.stderr


def test_sdist_without_torch_states_the_source_range(tmp_path):
    subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "-q", "egg_info", "--egg-base", str(tmp_path), "sdist",
                    "-d", str(tmp_path)], cwd=ROOT, check=True, capture_output=True, timeout=120)
    requires = (tmp_path / "twoway_fast.egg-info" / "requires.txt").read_text().split()
    assert "torch>=2.11" in requires and list(tmp_path.glob("twoway_fast-*.tar.gz"))


def test_sdist_holds_every_source_header_and_preset(tmp_path):
    # egg_info's by-products go to tmp_path, not the source tree
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "-d",
                    str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    (archive,) = tmp_path.glob("twoway_fast-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tracked = subprocess.run(["git", "ls-files", "csrc", "twoway_fast", "docs", "examples"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    if tracked:  # a git checkout: every tracked source is in the sdist
        assert set(tracked) - names == set()
    for required in ("LICENSE", "README.md", "CHANGELOG.md", "CITATION.cff", "csrc/checks.h",
                     "csrc/cpu/block_forward.h", "csrc/cuda/block_passes.cuh", "twoway_fast/presets/mnist.toml",
                     "twoway_fast/py.typed", "twoway_fast/_version.py"):
        assert required in names
    assert not [n for n in names if n.endswith((".so", ".o")) or n.endswith("_build_info.py")]
    with tarfile.open(archive) as tar:
        info = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("/PKG-INFO"))).read().decode()
    assert "Requires-Dist: torch>=2.11" in info and "License-Expression: MIT" in info

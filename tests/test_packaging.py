"""The installed package carries every source file the kernels are built from at run time: each
file a CPU or CUDA kernel source includes (and the sources themselves) matches the
``package-data`` patterns of pyproject.toml, so that ``pip install .`` (not only an editable
install) can build the kernels. A header left out once made every C++ kernel fall back to the
reference on CI."""

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"painnfx.ops.cpu": ROOT / "ops" / "cpu", "painnfx.ops.cuda": ROOT / "ops" / "cuda",
           "painnfx.tools.emulator": ROOT / "tools" / "emulator"}
INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"', re.M)


def _package_data() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]


def _needed(folder: Path) -> set:
    """The kernel sources of ``folder`` and every local file they include (in this folder or a sibling's)."""
    sources = [p for p in folder.iterdir() if p.suffix in (".cpp", ".cu", ".cuh", ".h")]
    names = {p.name for p in sources}
    for p in sources:
        names |= {inc for inc in INCLUDE.findall(p.read_text()) if (folder / inc).exists()}
    return names


@pytest.mark.parametrize("package", sorted(FOLDERS))
def test_every_kernel_source_and_header_is_package_data(package):
    patterns = _package_data().get(package, [])
    missing = [name for name in sorted(_needed(FOLDERS[package])) if not any(fnmatch.fnmatch(name, p) for p in patterns)]
    assert not missing, f"{package}: not installed by pip (pyproject package-data {patterns}): {missing}"

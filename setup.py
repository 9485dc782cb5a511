"""Build hooks (setuptools): a wheel or an sdist carries the prebuilt Java agent.

Everything else about the package is in pyproject.toml. Three commands are extended:

* ``build_py``  – puts ``heapballoon/_agent/`` (the agent jar, built with ``javac --release 17``,
  and the JNI library) and ``heapballoon/_data/`` (the guest's systemd unit and JVM drop-in,
  from ``packaging/``) into the build. From an sdist, which already carries the artifacts,
  nothing is compiled; from a checkout they are built from ``agent/`` (needs a JDK and gcc).
  Editable installs (``make venv``) skip this: a checkout builds the agent on first use.
* ``sdist``     – adds the same prebuilt artifacts to the source tree it packs.
* ``bdist_wheel`` – tags the wheel ``py3-none-<platform>``: any Python 3, but the native
  library is machine code. On x86-64 Linux the tag is ``manylinux_2_17_x86_64`` (so PyPI takes
  it and pip installs it on any glibc 2.17+ distribution): the library needs no glibc symbol
  newer than 2.17, which tests/integration/test_wheel.py checks with objdump.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
SHIPPED = ROOT / "src" / "heapballoon" / "_agent"  # present in an unpacked sdist
GUEST_FILES = ("heapballoon-guest.service", "java-agent.conf")


def _agent_artifacts(out_dir: Path) -> None:
    """Copy the shipped artifacts (sdist) or build them from ``agent/`` (checkout) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if (SHIPPED / "heapballoon-agent.jar").is_file():
        for f in SHIPPED.iterdir():
            shutil.copy2(f, out_dir / f.name)
        return
    sys.path.insert(0, str(ROOT / "src"))
    try:
        from heapballoon.agent import build
    finally:
        sys.path.pop(0)
    build.build_release(out_dir)


def _guest_files(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in GUEST_FILES:
        shutil.copy2(ROOT / "packaging" / name, out_dir / name)


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        package = Path(self.build_lib) / "heapballoon"
        _agent_artifacts(package / "_agent")
        _guest_files(package / "_data")


class Sdist(sdist):
    def make_release_tree(self, base_dir, files) -> None:
        super().make_release_tree(base_dir, files)
        _agent_artifacts(Path(base_dir) / "src" / "heapballoon" / "_agent")


MANYLINUX = {"linux_x86_64": "manylinux_2_17_x86_64"}  # glibc 2.17+: what the JNI library links against


class BdistWheel(bdist_wheel):
    def get_tag(self) -> tuple[str, str, str]:
        # The files stay pure Python's (purelib); only the tag says which machine the JNI library is for.
        plat = (self.plat_name if self.plat_name_supplied else sysconfig.get_platform()).replace("-", "_").replace(".", "_")
        return "py3", "none", MANYLINUX.get(plat, plat)


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist, "bdist_wheel": BdistWheel})

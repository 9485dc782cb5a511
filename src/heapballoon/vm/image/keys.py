"""The image cache key: a hash of every input, so a changed input means a new image.

Owns what goes into the key — package versions, the JDK's ``release`` file, the JRE modules,
the kernel modules wanted, the heapballoon source tree, the init script, the agent artifacts
and :data:`BUILDER_VERSION` — and where those inputs are found (the host JDK, the package's
own source, the agent build).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from heapballoon.errors import ImageError
from heapballoon.vm.image.kmods import GUEST_MODULES
from heapballoon.vm.image.progress import Progress

BUILDER_VERSION = 4
JRE_MODULES = [
    "java.base", "java.instrument", "java.logging", "java.management", "java.naming",
    "jdk.attach", "jdk.management", "jdk.unsupported", "jdk.jcmd",
    "jdk.httpserver",  # guest services answering HTTP (the experiment's CacheService)
]


def jdk_home() -> Path:
    """The host JDK used for jlink: HEAPBALLOON_JDK, JAVA_HOME, Debian's 17, or `jlink` on PATH."""
    candidates = [os.environ.get("HEAPBALLOON_JDK"), os.environ.get("JAVA_HOME"),
                  "/usr/lib/jvm/java-17-openjdk-amd64"]
    jlink = shutil.which("jlink")
    if jlink:
        candidates.append(str(Path(os.path.realpath(jlink)).parent.parent))
    for c in candidates:
        if c and (Path(c) / "bin" / "jlink").exists() and (Path(c) / "jmods").is_dir():
            return Path(c)
    raise ImageError("no JDK with jlink and jmods found (install openjdk-17-jdk-headless or set JAVA_HOME)")


def package_dir() -> Path:
    import heapballoon

    return Path(heapballoon.__file__).resolve().parent


def init_script_path() -> Path:
    return package_dir() / "guest" / "init" / "init"


def package_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "_agent") and not d.startswith("."))
        for f in sorted(filenames):
            if not f.endswith((".pyc", ".pyo")) and not f.startswith("."):
                files.append(Path(dirpath) / f)
    return files


def source_tree_hash(root: Path | None = None) -> str:
    root = root or package_dir()
    h = hashlib.sha256()
    for f in package_files(root):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def file_hash(p: Path | None) -> str | None:
    if p is None:
        return None
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def agent_artifacts(progress: Progress) -> tuple[Path | None, Path | None]:
    """The agent jar and native library from heapballoon.agent.build, or (None, None) with a warning."""
    try:
        from heapballoon.agent import build as agent_build  # written by the agent engineer
    except Exception as e:
        progress.warn(f"Java agent not included in the guest image (heapballoon.agent.build: {e})")
        return None, None
    jar = native = None
    try:
        jar = Path(agent_build.agent_jar())
    except Exception as e:
        progress.warn(f"Java agent jar not included in the guest image: {e}")
        return None, None
    try:
        native = Path(agent_build.native_lib())
    except Exception as e:
        progress.warn(f"agent native library not included in the guest image: {e}")
    return jar, native


def key_inputs(packages: dict[str, str], jdk: Path, jar: Path | None, native: Path | None) -> dict:
    release = (jdk / "release").read_text() if (jdk / "release").exists() else str(jdk)
    return {
        "builder": BUILDER_VERSION,
        "packages": packages,
        "jdk": hashlib.sha256(release.encode()).hexdigest(),
        "jre_modules": JRE_MODULES,
        "guest_modules": GUEST_MODULES,
        "source": source_tree_hash(),
        "init": hashlib.sha256(init_script_path().read_bytes()).hexdigest(),
        "agent_jar": file_hash(jar),
        "agent_native": file_hash(native),
    }


def image_key(inputs: dict) -> str:
    """The cache key of ``inputs`` (20 hex digits of their sha256)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]

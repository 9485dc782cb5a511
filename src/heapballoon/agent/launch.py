"""The JVM options `heapballoon run` adds to a java command line, besides the agent itself.

Owns the choice of options and how the JDK's version is read for it (the ``release`` file of the
runtime the ``java`` on the command line belongs to). Nothing here starts a process.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

# The agent's JNI library is a restricted method call on JDK 24+ (JEP 472): allow it, so the JVM
# prints no warning. JDK 17 to 23 accept the option silently.
NATIVE_ACCESS = "--enable-native-access=ALL-UNNAMED"
# Parallel on JDK 17 to 22 runs a young collection before every full one (removed in JDK 23). That
# young collection promotes the balloon chunks the agent places with a full collection, and counts
# them in Parallel's promotion estimate, which can then exceed the old generation's free space and
# make every later collection a full one (docs/agent.md, "Parallel"). JDK 23+ reject the option.
NO_SCAVENGE_BEFORE_FULL = "-XX:-ScavengeBeforeFullGC"
LAST_MAJOR_WITH_SCAVENGE_BEFORE_FULL = 21  # 22 accepts it with a deprecation warning: leave 22 alone
# Parallel's System.gc() compacts fully by default, sliding the balloon's chunks over whatever died
# below them and rewriting their released pages (0.4-1.3 s for 400 MiB); without it the dense
# prefix keeps them in place. JDK 17, 21 and 25 accept the option.
NO_MAX_COMPACTION_ON_SYSTEM_GC = "-XX:-UseMaximumCompactionOnSystemGC"
# One full collection in HeapMaximumCompactionInterval (20) compacts fully too. At 1.6 GiB/s a balloon
# makes Parallel collect fully about once a second, so that was a 0.6-1.2 s slide every ~20 s (GC CPU
# share 14.8 % against 3.1 % without the balloon; with 100: 9.5 %, pause p99 89 ms against 834). The
# last-ditch collection before an OutOfMemoryError still compacts fully. JDK 17, 21 and 25 accept it.
MAX_COMPACTION_INTERVAL = "-XX:HeapMaximumCompactionInterval=100"
RELEASE_MAX_BYTES = 64 << 10  # a JDK's release file is ~1-2 KiB


def java_major(java: str) -> int | None:
    """The feature release of the JDK that ``java`` (a path or a name on PATH) belongs to, from its
    ``release`` file (JAVA_VERSION="17.0.15"); None when there is none to read."""
    found = shutil.which(java)
    if found is None:
        return None
    release = Path(os.path.realpath(found)).parent.parent / "release"
    try:
        if not release.is_file():  # a FIFO or /dev/zero planted there would block or never end
            return None
        with release.open("rb") as f:
            text = f.read(RELEASE_MAX_BYTES).decode(errors="replace")
    except OSError:
        return None
    m = re.search(r'^JAVA_VERSION="(?:1\.)?(\d+)', text, re.MULTILINE)
    return int(m.group(1)) if m else None


def java_options(cmd: list[str], env: dict[str, str]) -> list[str]:
    """The options to insert right after ``java`` in ``cmd`` (the user's own options come later
    and so win): native access; for Parallel, -XX:-ScavengeBeforeFullGC on JDK 17 to 21,
    -XX:-UseMaximumCompactionOnSystemGC and a HeapMaximumCompactionInterval of 100, each unless the
    user set that option."""
    options = [NATIVE_ACCESS]
    words = " ".join([*cmd[1:], env.get("JAVA_TOOL_OPTIONS", ""), env.get("JDK_JAVA_OPTIONS", "")])
    if "-XX:+UseParallelGC" not in words:
        return options
    if "ScavengeBeforeFullGC" not in words:
        major = java_major(cmd[0])
        if major is not None and major <= LAST_MAJOR_WITH_SCAVENGE_BEFORE_FULL:
            options.append(NO_SCAVENGE_BEFORE_FULL)
    if "UseMaximumCompactionOnSystemGC" not in words:
        options.append(NO_MAX_COMPACTION_ON_SYSTEM_GC)
    if "HeapMaximumCompactionInterval" not in words:
        options.append(MAX_COMPACTION_INTERVAL)
    return options

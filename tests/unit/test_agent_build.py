"""heapballoon.agent.build: option strings, the source-hash cache, and build failures."""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import pytest

from heapballoon.agent import build
from heapballoon.errors import AgentBuildError, UsageError

REPO_AGENT = Path(__file__).resolve().parents[2] / "agent"
needs_javac = pytest.mark.skipif(shutil.which("javac") is None, reason="javac not on PATH")


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """A private copy of the agent sources and an empty cache."""
    src = tmp_path / "agent"
    shutil.copytree(REPO_AGENT, src)
    monkeypatch.setenv("HEAPBALLOON_AGENT_SRC", str(src))
    monkeypatch.setenv("HEAPBALLOON_CACHE", str(tmp_path / "cache"))
    return src


def test_agent_options_full():
    assert (build.agent_options("/run/x.sock", "orders", Path("/p/lib.so"), 500)
            == "socket=/run/x.sock,name=orders,native=/p/lib.so,interval_ms=500")


def test_agent_options_defaults():
    assert build.agent_options("/run/x.sock") == "socket=/run/x.sock,interval_ms=1000"


@pytest.mark.parametrize("name", ["a,b", "a=b", "", "x\ny"])
def test_agent_options_rejects_bad_names(name):
    with pytest.raises(UsageError):
        build.agent_options("/run/x.sock", name)


def test_agent_options_rejects_bad_socket_and_interval():
    with pytest.raises(UsageError):
        build.agent_options("/run/a,b.sock")
    with pytest.raises(UsageError):
        build.agent_options("/run/x.sock", interval_ms=0)


def test_missing_javac_is_a_one_line_build_error(sources, monkeypatch):
    monkeypatch.setenv("PATH", str(sources / "nothing-here"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(AgentBuildError, match="javac not found") as err:
        build.agent_jar()
    assert "\n" not in str(err.value)


def test_missing_sources_is_a_build_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HEAPBALLOON_AGENT_SRC", str(tmp_path / "none"))
    monkeypatch.setattr(build, "__file__", str(tmp_path / "x" / "y" / "build.py"))
    with pytest.raises(AgentBuildError, match="sources not found"):
        build.source_root()


@needs_javac
def test_cache_hit_and_rebuild_on_change(sources):
    jar = build.agent_jar()
    with zipfile.ZipFile(jar) as z:
        manifest = z.read("META-INF/MANIFEST.MF").decode()
        assert "io/heapballoon/agent/Agent.class" in z.namelist()
    assert "Premain-Class: io.heapballoon.agent.Agent" in manifest
    assert "Agent-Class: io.heapballoon.agent.Agent" in manifest
    assert "Can-Redefine-Classes: false" in manifest
    mtime = jar.stat().st_mtime_ns

    assert build.agent_jar() == jar  # cache hit: same file, not rewritten
    assert jar.stat().st_mtime_ns == mtime

    log_java = sources / "src" / "io" / "heapballoon" / "agent" / "Log.java"
    log_java.write_text(log_java.read_text() + "\n// changed\n")
    rebuilt = build.agent_jar()
    assert rebuilt != jar and rebuilt.is_file()
    assert not [p for p in rebuilt.parent.parent.iterdir() if p.name.startswith(".")], "temp dirs left behind"


@needs_javac
def test_compile_error_is_a_one_line_build_error(sources):
    broken = sources / "src" / "io" / "heapballoon" / "agent" / "Log.java"
    broken.write_text(broken.read_text().replace("final class Log {", "final class Log { int x = ;", 1))
    with pytest.raises(AgentBuildError, match="javac failed") as err:
        build.agent_jar()
    assert "\n" not in str(err.value)
    assert not list((sources.parent / "cache").glob("agent-*")), "a failed build must leave no cache entry"


@needs_javac
def test_demo_jar_has_main_class(sources):
    with zipfile.ZipFile(build.demo_jar()) as z:
        assert "Main-Class: io.heapballoon.demo.ChurnApp" in z.read("META-INF/MANIFEST.MF").decode()


def test_native_lib_without_gcc_warns_and_returns_none(sources, monkeypatch, caplog):
    real_which = shutil.which
    monkeypatch.setattr(build.shutil, "which", lambda name: None if name in ("gcc", "cc") else real_which(name))
    if real_which("javac") is None:
        pytest.skip("javac not on PATH")
    with caplog.at_level(logging.WARNING, logger="heapballoon.agent"):
        assert build.native_lib() is None
    assert any("gcc" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("javac") is None, reason="gcc or javac missing")
def test_native_lib_is_built_and_cached(sources):
    lib = build.native_lib()
    assert lib is not None and lib.name == "libheapballoon.so"
    assert build.native_lib() == lib


@needs_javac
def test_javaagent_arg(sources):
    arg = build.javaagent_arg("/run/x.sock", "orders")
    assert arg.startswith(f"-javaagent:{build.agent_jar()}=socket=/run/x.sock,name=orders,")
    assert arg.endswith(",interval_ms=1000")

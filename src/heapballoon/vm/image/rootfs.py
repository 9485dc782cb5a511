"""The guest's root filesystem tree, staged in a directory before it becomes the root disk.

Owns what goes into the tree and where: the kernel and its modules (``install_kernel``), the
pruning of what a guest never uses, busybox applets, ``/etc``, ``/init``
(``guest/init/init``), the heapballoon package source run by the guest's own python3.11
(byte-compiled, unchecked-hash pycs, then an import check with the staged interpreter), a
JRE made with ``jlink`` from the host JDK (with a CDS archive when possible) and the Java
agent. The ``.deb`` contents are extracted into it by build.py first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from heapballoon.agent.build import AGENT_JAR, NATIVE_LIB
from heapballoon.errors import ImageError
from heapballoon.vm.image.keys import JRE_MODULES, init_script_path, package_dir, package_files
from heapballoon.vm.image.kmods import GUEST_MODULES, select_modules
from heapballoon.vm.image.progress import Progress, run

GUEST_PYTHON_SITE = "usr/lib/python3/dist-packages"
GUEST_AGENT_JAR = "/opt/heapballoon/heapballoon-agent.jar"
GUEST_AGENT_NATIVE = "/opt/heapballoon/libheapballoon.so"
GUEST_JAVA_HOME = "/opt/heapballoon/jre"

PRUNE = [
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
    "usr/share/bug", "usr/share/gdb", "usr/share/gcc", "usr/share/binfmts", "usr/share/applications",
    "usr/share/pixmaps", "usr/lib/x86_64-linux-gnu/gconv", "usr/lib/x86_64-linux-gnu/audit",
    "usr/lib/python3.11/test", "usr/lib/python3.11/idlelib", "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo", "usr/lib/python3.11/ensurepip", "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data", "usr/lib/python3.11/sqlite3", "usr/lib/python3.11/dbm",
    "usr/lib/python3.11/curses", "usr/lib/python3.11/unittest/test", "usr/lib/python3.11/ctypes/test",
    "usr/lib/python3.11/distutils/tests",
]
# extension modules whose libraries are not in the image
PRUNE_LIBDYNLOAD = re.compile(r"^_(sqlite3|dbm|gdbm|curses|curses_panel|tkinter)\.|^(readline|nis)\.")


def install_kernel(kdir: Path, root: Path, out: Path, kernel_pkg: str,
                   prog: Progress) -> tuple[str, list[tuple[str, bytes]], Path]:
    """Copy the kernel to ``out/vmlinuz`` and the wanted modules (dependencies first) into
    ``root``; returns (kernel version, modules, module directory)."""
    versions = sorted((kdir / "lib" / "modules").iterdir())
    if len(versions) != 1:
        raise ImageError(f"{kernel_pkg}: expected one /lib/modules/<version>, found {len(versions)}")
    kver = versions[0].name
    vmlinuz = kdir / "boot" / f"vmlinuz-{kver}"
    if not vmlinuz.exists():
        raise ImageError(f"{kernel_pkg}: no /boot/vmlinuz-{kver}")
    shutil.copy2(vmlinuz, out / "vmlinuz")
    mods = select_modules(versions[0], GUEST_MODULES)
    prog.step(f"kernel {kver}; modules: {' '.join(n for n, _ in mods)}")
    mdir = root / "lib" / "modules" / "heapballoon"
    mdir.mkdir(parents=True)
    for name, data in mods:
        (mdir / f"{name}.ko").write_bytes(data)
    (root / "etc" / "heapballoon").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "heapballoon" / "modules").write_text("".join(f"{n}\n" for n, _ in mods))
    return kver, mods, mdir


def stage(root: Path, jdk: Path, jar: Path | None, native: Path | None, prog: Progress) -> list[str]:
    """Everything but the kernel into ``root``; returns busybox's applet paths."""
    # prune what a guest never uses
    for rel in PRUNE:
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
    dynload = root / "usr/lib/python3.11/lib-dynload"
    for p in dynload.iterdir() if dynload.is_dir() else []:
        if PRUNE_LIBDYNLOAD.search(p.name):
            p.unlink()

    # busybox applets (symlinks where the packages did not put a real program)
    bb = root / "bin" / "busybox"
    applets = run([str(bb), "--list-full"], "busybox --list-full").stdout.split()
    for a in applets:
        dst = root / a
        if not os.path.lexists(dst):
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink("/bin/busybox", dst)
    usr_bin = root / "usr" / "bin"
    for link, target in (("python3", "python3.11"), ("java", f"{GUEST_JAVA_HOME}/bin/java")):
        if not os.path.lexists(usr_bin / link):
            os.symlink(target, usr_bin / link)

    # /etc and friends
    etc = root / "etc"
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (etc / "group").write_text("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")
    (etc / "hostname").write_text("heapballoon\n")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost heapballoon\n::1\tlocalhost ip6-localhost\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files\n")
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "var/log", "var/tmp", "heapballoon",
              "media/root-ro", "media/root-rw"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(init_script_path(), root / "init")
    os.chmod(root / "init", 0o755)

    # heapballoon package (source; the guest runs it with its own python3.11)
    site = root / GUEST_PYTHON_SITE
    site.mkdir(parents=True, exist_ok=True)
    src = package_dir()
    for f in package_files(src):
        dst = site / "heapballoon" / f.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst)

    # JRE
    prog.step(f"jlink JRE from {jdk} ({', '.join(JRE_MODULES)})")
    jre = root / GUEST_JAVA_HOME.lstrip("/")
    jre.parent.mkdir(parents=True, exist_ok=True)
    jlink_cmd = [str(jdk / "bin" / "jlink"), "--add-modules", ",".join(JRE_MODULES),
                 "--strip-debug", "--no-header-files", "--no-man-pages", "--compress=2",
                 "--output", str(jre)]
    try:
        run(jlink_cmd + ["--generate-cds-archive"], "jlink")
    except ImageError as e:
        prog.warn(f"jlink with a CDS archive failed ({e}); building without")
        shutil.rmtree(jre, ignore_errors=True)
        run(jlink_cmd, "jlink")
    for unwanted in ("legal",):
        shutil.rmtree(jre / unwanted, ignore_errors=True)

    # agent
    if jar is not None:
        shutil.copy2(jar, root / GUEST_AGENT_JAR.lstrip("/"))
    if native is not None:
        shutil.copy2(native, root / GUEST_AGENT_NATIVE.lstrip("/"))
    # ...which is also the guest package's prebuilt agent (agent/build.py), so that
    # `heapballoon attach` in the guest finds it (it has no agent sources to build from)
    shipped = site / "heapballoon" / "_agent"
    for artifact, guest_path, name in ((jar, GUEST_AGENT_JAR, AGENT_JAR), (native, GUEST_AGENT_NATIVE, NATIVE_LIB)):
        if artifact is not None:
            shipped.mkdir(exist_ok=True)
            os.symlink(guest_path, shipped / name)

    # byte-compile (unchecked-hash: valid whatever the file times are in the guest)
    prog.step("byte-compiling the guest python")
    staged_python(root, ["-I", "-m", "compileall", "-q", "-j1", "--invalidation-mode", "unchecked-hash",
                          "/usr/lib/python3.11", f"/{GUEST_PYTHON_SITE}"] if os.geteuid() == 0 else
                   ["-I", "-m", "compileall", "-q", "-j1", "--invalidation-mode", "unchecked-hash",
                    "-s", str(root), "-p", "/", f"{root}/usr/lib/python3.11", f"{root}/{GUEST_PYTHON_SITE}"],
                   "compileall")
    # the guest python must import what the guest code needs, from the staged files only
    check = ("import asyncio, json, socket, mmap, ctypes, struct, logging, ssl, hashlib, base64, "
             "subprocess, selectors, threading; import heapballoon.guest.supervisor; print('ok')")
    if os.geteuid() == 0:
        staged_python(root, ["-I", "-c", check], "guest python import check")
    else:
        staged_python(root, ["-I", "-c", f"import sys; sys.path.append({str(site)!r}); {check}"],
                       "guest python import check")
    return applets


def staged_python(root: Path, args: list[str], what: str) -> subprocess.CompletedProcess:
    """Run the guest's python3.11 against the staging tree (chroot when root, else its own ld.so)."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    if os.geteuid() == 0:
        def enter() -> None:
            os.chroot(root)
            os.chdir("/")

        return run(["/usr/bin/python3.11", *args], what, env=env, preexec_fn=enter)
    libpath = f"{root}/lib/x86_64-linux-gnu:{root}/usr/lib/x86_64-linux-gnu"
    env["PYTHONHOME"] = f"{root}/usr"
    return run([f"{root}/lib64/ld-linux-x86-64.so.2", "--inhibit-cache", "--library-path", libpath,
                 f"{root}/usr/bin/python3.11", *args], what, env=env)

"""Build (and cache) the guest image: a Debian cloud kernel, a small initramfs and a read-only root disk.

Everything comes from Debian packages (``apt-get download`` + ``dpkg-deb -x``) and the host
JDK; nothing else is downloaded. The root filesystem tree is staged once and written as an
ext4 image (``mke2fs -d``: no root, no loop device; no journal) that every VM attaches
read-only as a virtio-blk disk, so its pages are ordinary, evictable page cache in the guest
(and shared through the host page cache by all VMs). It holds:

* busybox-static (``/bin/busybox`` + applet symlinks) and ``/init`` (``guest/init/init``);
* glibc, libstdc++ and Debian's python3.11 runtime (only what the guest's stdlib code needs);
* a JRE made with ``jlink`` from the host JDK (with a CDS archive) at ``/opt/heapballoon/jre``;
* the heapballoon package source at ``/usr/lib/python3/dist-packages/heapballoon``
  (byte-compiled, unchecked-hash pycs), run by the guest's own python3.11;
* the Java agent jar + native library at ``/opt/heapballoon/`` when they can be built;
* the virtio kernel modules (uncompressed), in dependency order in ``/etc/heapballoon/modules``.

The initramfs only holds what mounts that disk: busybox + applet symlinks, ``/init``, the
kernel modules (virtio_pci, virtio_blk, overlay, ...) and ``/etc/heapballoon/{modules,image.json}``.
``/init`` (stage 1) mounts the disk read-only, puts an overlay on it (upper: tmpfs) and
``switch_root``s into it, where ``/init`` runs again (stage 2, the disk's copy).

The cache key is a hash of every input (package versions, the JDK's ``release`` file, the
heapballoon source tree, the init script, the agent artifacts, this builder's version); a
changed input means a new image directory. Layout (``HEAPBALLOON_CACHE`` or
``~/.cache/heapballoon``)::

    debs/                      downloaded .debs, kept across builds
    images/<key>/vmlinuz       the kernel
    images/<key>/initrd.img    the initramfs (gzip-compressed newc cpio)
    images/<key>/rootfs.img    the read-only root disk (ext4, raw, no journal)
    images/<key>/probe.cpio    a tiny busybox initramfs for the KVM probe (see accel.py)
    images/<key>/manifest.json what went in
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from heapballoon.errors import ImageError

BUILDER_VERSION = 4

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BASE_PACKAGES = ["libc6", "libgcc-s1", "libstdc++6", "zlib1g", "busybox-static"]
# what `import asyncio, json, socket, mmap, ctypes, struct, logging, ssl, hashlib` needs
PYTHON_PACKAGES = [
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libuuid1", "libcrypt1",
]
JRE_MODULES = [
    "java.base", "java.instrument", "java.logging", "java.management", "java.naming",
    "jdk.attach", "jdk.management", "jdk.unsupported", "jdk.jcmd",
]
# kernel modules to load in the guest (their dependencies are added from .modinfo)
GUEST_MODULES = ["virtio_pci", "virtio_blk", "overlay", "virtio_console", "virtio_balloon", "virtio_rng"]
# the root disk: ext4 is built into the Debian cloud kernel (CONFIG_EXT4_FS=y); virtio_blk and
# overlay are modules, loaded from the initramfs
ROOTDISK_NAME = "rootfs.img"
ROOTDISK_LABEL = "hbroot"

GUEST_PYTHON_SITE = "usr/lib/python3/dist-packages"
GUEST_AGENT_JAR = "/opt/heapballoon/heapballoon-agent.jar"
GUEST_AGENT_NATIVE = "/opt/heapballoon/libheapballoon.so"
GUEST_JAVA_HOME = "/opt/heapballoon/jre"

_PRUNE = [
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
_PRUNE_LIBDYNLOAD = re.compile(r"^_(sqlite3|dbm|gdbm|curses|curses_panel|tkinter)\.|^(readline|nis)\.")


@dataclass(frozen=True)
class Image:
    kernel_path: Path
    initrd_path: Path
    key: str
    probe_initrd_path: Path | None = None
    kernel_version: str = ""
    initrd_bytes: int = 0
    rootdisk_path: Path | None = None
    rootdisk_bytes: int = 0


# ---------------------------------------------------------------------------------------------
# paths and small helpers

def cache_root() -> Path:
    env = os.environ.get("HEAPBALLOON_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "heapballoon"


def images_dir() -> Path:
    return cache_root() / "images"


def debs_dir() -> Path:
    return cache_root() / "debs"


class _Progress:
    """Steps on stderr: a rich status line on a TTY, plain lines otherwise, nothing if quiet."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._status = None
        self._console = None
        self._t0 = time.monotonic()
        if enabled and sys.stderr.isatty():
            try:
                from rich.console import Console

                self._console = Console(stderr=True)
                self._status = self._console.status("building guest image")
                self._status.start()
            except Exception:  # rich missing or broken: plain lines
                self._console = None

    def step(self, msg: str) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self._t0
        if self._console is not None:
            self._status.update(f"[bold]guest image[/bold]: {msg}")
            self._console.log(f"{msg}", highlight=False)
        else:
            print(f"heapballoon image [{elapsed:5.1f}s] {msg}", file=sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        # warnings are shown even when progress is off
        if self._console is not None:
            self._console.log(f"[yellow]warning:[/yellow] {msg}", highlight=False)
        else:
            print(f"heapballoon image: warning: {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise ImageError(f"{what}: {cmd[0]} not found (install it, e.g. apt-get install {cmd[0]})") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        raise ImageError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail) or 'no output'}")
    return proc


# ---------------------------------------------------------------------------------------------
# Debian packages

_apt_updated = False


def _apt_update(progress: _Progress) -> None:
    global _apt_updated
    if _apt_updated:
        return
    progress.step("apt-get update")
    _run(["apt-get", "update", "-qq"], "apt-get update")
    _apt_updated = True


def _candidates(names: list[str]) -> dict[str, str]:
    proc = subprocess.run(["apt-cache", "policy", *names], capture_output=True, text=True)
    out: dict[str, str] = {}
    current = None
    for line in proc.stdout.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
        elif current and line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                out[current] = version
    return out


def _kernel_package() -> str | None:
    proc = subprocess.run(["apt-cache", "depends", KERNEL_META_PACKAGE], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        m = re.match(r"\s*(?:\|)?Depends:\s*(linux-image-\S+)", line)
        if m and not m.group(1).startswith("<"):
            return m.group(1)
    return None


def resolve_packages(progress: _Progress | None = None) -> dict[str, str]:
    """Package name → candidate version for everything in the image (kernel resolved)."""
    progress = progress or _Progress(False)
    for attempt in range(2):
        kernel = _kernel_package()
        names = BASE_PACKAGES + PYTHON_PACKAGES + ([kernel] if kernel else [])
        versions = _candidates(names) if kernel else {}
        missing = [n for n in names if n not in versions] if kernel else [KERNEL_META_PACKAGE]
        if not missing:
            return {n: versions[n] for n in names}
        if attempt == 0:
            _apt_update(progress)
    raise ImageError(f"Debian packages not available from apt: {', '.join(missing)} "
                     "(is this a Debian 12 host with apt sources configured?)")


def _deb_filename_version(version: str) -> str:
    return version.replace(":", "%3a")


def fetch_debs(packages: dict[str, str], progress: _Progress | None = None) -> dict[str, Path]:
    """Download (or reuse from the cache) each ``name=version`` .deb; returns name → path."""
    progress = progress or _Progress(False)
    ddir = debs_dir()
    ddir.mkdir(parents=True, exist_ok=True)

    def find(name: str, version: str) -> Path | None:
        hits = sorted(ddir.glob(f"{name}_{_deb_filename_version(version)}_*.deb"))
        return hits[0] if hits else None

    missing = [n for n, v in packages.items() if find(n, v) is None]
    if missing:
        progress.step(f"apt-get download {len(missing)} packages: {' '.join(missing)}")
        specs = [f"{n}={packages[n]}" for n in missing]
        try:
            _run(["apt-get", "download", "-qq", *specs], "apt-get download", cwd=ddir)
        except ImageError:
            _apt_update(progress)
            _run(["apt-get", "download", "-qq", *specs], "apt-get download", cwd=ddir)
    out = {}
    for n, v in packages.items():
        p = find(n, v)
        if p is None:
            raise ImageError(f"apt-get download did not produce {n} {v}")
        out[n] = p
    return out


# ---------------------------------------------------------------------------------------------
# inputs of the cache key

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


def _package_files(root: Path) -> list[Path]:
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
    for f in _package_files(root):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _file_hash(p: Path | None) -> str | None:
    if p is None:
        return None
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _agent_artifacts(progress: _Progress) -> tuple[Path | None, Path | None]:
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


# ---------------------------------------------------------------------------------------------
# kernel modules

def _modinfo_depends(data: bytes) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    if not m or not m.group(1):
        return []
    return [d.decode() for d in m.group(1).split(b",") if d]


def _read_module(path: Path) -> bytes:
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        proc = subprocess.run(["zstd", "-dc", str(path)], capture_output=True)
        if proc.returncode != 0:
            raise ImageError(f"zstd -d {name} failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout
    return path.read_bytes()


def _modname(path: Path) -> str:
    return re.sub(r"\.ko(\.(xz|gz|zst))?$", "", path.name).replace("-", "_")


def select_modules(moddir: Path, wanted: list[str]) -> list[tuple[str, bytes]]:
    """(name, uncompressed .ko) for ``wanted`` and their dependencies, dependencies first."""
    index: dict[str, Path] = {}
    for p in (moddir / "kernel").rglob("*.ko*"):
        index[_modname(p)] = p
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        builtin = {_modname(Path(line.strip())) for line in bfile.read_text().splitlines() if line.strip()}
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise ImageError(f"kernel module dependency cycle: {' -> '.join(chain + (name,))}")
        if name not in index:
            raise ImageError(f"kernel module {name} not found in {moddir.name} (and not built in)")
        data = _read_module(index[name])
        for dep in _modinfo_depends(data):
            visit(dep, chain + (name,))
        seen.add(name)
        order.append((name, data))

    for w in wanted:
        visit(w, ())
    return order


# ---------------------------------------------------------------------------------------------
# build

def _key_inputs(packages: dict[str, str], jdk: Path, jar: Path | None, native: Path | None) -> dict:
    release = (jdk / "release").read_text() if (jdk / "release").exists() else str(jdk)
    return {
        "builder": BUILDER_VERSION,
        "packages": packages,
        "jdk": hashlib.sha256(release.encode()).hexdigest(),
        "jre_modules": JRE_MODULES,
        "guest_modules": GUEST_MODULES,
        "source": source_tree_hash(),
        "init": hashlib.sha256(init_script_path().read_bytes()).hexdigest(),
        "agent_jar": _file_hash(jar),
        "agent_native": _file_hash(native),
    }


def _image_from_dir(d: Path, key: str) -> Image:
    manifest = json.loads((d / "manifest.json").read_text())
    probe = d / "probe.cpio"
    disk = d / ROOTDISK_NAME
    return Image(kernel_path=d / "vmlinuz", initrd_path=d / "initrd.img", key=key,
                 probe_initrd_path=probe if probe.exists() else None,
                 kernel_version=manifest.get("kernel_version", ""),
                 initrd_bytes=(d / "initrd.img").stat().st_size,
                 rootdisk_path=disk if disk.exists() else None,
                 rootdisk_bytes=disk.stat().st_size if disk.exists() else 0)


def cached_image() -> Image | None:
    """The newest complete image in the cache without checking inputs (no apt, no hashing)."""
    best = None
    d = images_dir()
    if not d.is_dir():
        return None
    for m in d.glob("*/manifest.json"):
        if best is None or m.stat().st_mtime > best.stat().st_mtime:
            best = m
    return _image_from_dir(best.parent, best.parent.name) if best else None


KEEP_IMAGES = 3


def _prune_images(keep: set[str]) -> None:
    """Delete all but the newest KEEP_IMAGES images (and stale half-built directories)."""
    d = images_dir()
    done = sorted((m.parent for m in d.glob("*/manifest.json")), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in done[KEEP_IMAGES:]:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in d.glob(".build-*"):
        try:
            if time.time() - tmp.stat().st_mtime > 3600:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def build_image(progress: bool = True, force: bool = False) -> Image:
    """Return the guest image for the current inputs, building it if it is not cached."""
    prog = _Progress(progress)
    try:
        images_dir().mkdir(parents=True, exist_ok=True)
        with open(images_dir() / ".lock", "w") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_EX)
            packages = resolve_packages(prog)
            jdk = jdk_home()
            jar, native = _agent_artifacts(prog)
            inputs = _key_inputs(packages, jdk, jar, native)
            key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]
            out = images_dir() / key
            if (out / "manifest.json").exists() and not force:
                prog.step(f"cached image {key}")
                return _image_from_dir(out, key)
            t0 = time.monotonic()
            debs = fetch_debs(packages, prog)
            tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=images_dir()))
            try:
                _build(tmp, key, packages, debs, jdk, jar, native, inputs, prog)
                manifest = json.loads((tmp / "manifest.json").read_text())
                manifest["build_seconds"] = round(time.monotonic() - t0, 1)
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                if out.exists():
                    shutil.rmtree(out)
                os.rename(tmp, out)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            _prune_images(keep={key})
            img = _image_from_dir(out, key)
            prog.step(f"image {key} ready: initrd {img.initrd_bytes / 2**20:.1f} MiB, "
                      f"root disk {img.rootdisk_bytes / 2**20:.1f} MiB in {time.monotonic() - t0:.0f}s")
            return img
    finally:
        prog.close()


def _extract(deb: Path, dest: Path) -> None:
    _run(["dpkg-deb", "-x", str(deb), str(dest)], f"dpkg-deb -x {deb.name}")


def _staged_python(root: Path, args: list[str], what: str) -> subprocess.CompletedProcess:
    """Run the guest's python3.11 against the staging tree (chroot when root, else its own ld.so)."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    if os.geteuid() == 0:
        def enter() -> None:
            os.chroot(root)
            os.chdir("/")

        return _run(["/usr/bin/python3.11", *args], what, env=env, preexec_fn=enter)
    libpath = f"{root}/lib/x86_64-linux-gnu:{root}/usr/lib/x86_64-linux-gnu"
    env["PYTHONHOME"] = f"{root}/usr"
    return _run([f"{root}/lib64/ld-linux-x86-64.so.2", "--inhibit-cache", "--library-path", libpath,
                 f"{root}/usr/bin/python3.11", *args], what, env=env)


def _build(out: Path, key: str, packages: dict[str, str], debs: dict[str, Path], jdk: Path,
           jar: Path | None, native: Path | None, inputs: dict, prog: _Progress) -> None:
    from heapballoon.vm.cpio import CpioWriter

    root = out / "rootfs"
    kdir = out / "kernel"
    root.mkdir()
    kdir.mkdir()
    kernel_pkg = next(n for n in packages if n.startswith("linux-image-"))

    prog.step(f"extracting {len(debs) - 1} packages")
    for name, deb in debs.items():
        _extract(deb, kdir if name == kernel_pkg else root)

    # kernel + modules
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

    # prune what a guest never uses
    for rel in _PRUNE:
        p = root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
    dynload = root / "usr/lib/python3.11/lib-dynload"
    for p in dynload.iterdir() if dynload.is_dir() else []:
        if _PRUNE_LIBDYNLOAD.search(p.name):
            p.unlink()

    # busybox applets (symlinks where the packages did not put a real program)
    bb = root / "bin" / "busybox"
    applets = _run([str(bb), "--list-full"], "busybox --list-full").stdout.split()
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
    for f in _package_files(src):
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
        _run(jlink_cmd + ["--generate-cds-archive"], "jlink")
    except ImageError as e:
        prog.warn(f"jlink with a CDS archive failed ({e}); building without")
        shutil.rmtree(jre, ignore_errors=True)
        _run(jlink_cmd, "jlink")
    for unwanted in ("legal",):
        shutil.rmtree(jre / unwanted, ignore_errors=True)

    # agent
    if jar is not None:
        shutil.copy2(jar, root / GUEST_AGENT_JAR.lstrip("/"))
    if native is not None:
        shutil.copy2(native, root / GUEST_AGENT_NATIVE.lstrip("/"))

    # byte-compile (unchecked-hash: valid whatever the file times are in the guest)
    prog.step("byte-compiling the guest python")
    _staged_python(root, ["-I", "-m", "compileall", "-q", "-j1", "--invalidation-mode", "unchecked-hash",
                          "/usr/lib/python3.11", f"/{GUEST_PYTHON_SITE}"] if os.geteuid() == 0 else
                   ["-I", "-m", "compileall", "-q", "-j1", "--invalidation-mode", "unchecked-hash",
                    "-s", str(root), "-p", "/", f"{root}/usr/lib/python3.11", f"{root}/{GUEST_PYTHON_SITE}"],
                   "compileall")
    # the guest python must import what the guest code needs, from the staged files only
    check = ("import asyncio, json, socket, mmap, ctypes, struct, logging, ssl, hashlib, base64, "
             "subprocess, selectors, threading; import heapballoon.guest.supervisor; print('ok')")
    if os.geteuid() == 0:
        _staged_python(root, ["-I", "-c", check], "guest python import check")
    else:
        _staged_python(root, ["-I", "-c", f"import sys; sys.path.append({str(site)!r}); {check}"],
                       "guest python import check")

    (etc / "heapballoon" / "image.json").write_text(json.dumps(
        {"key": key, "kernel_version": kver, "agent": jar is not None, "agent_native": native is not None},
        sort_keys=True) + "\n")

    # the read-only root disk: the whole staged tree
    prog.step("writing the root disk (mke2fs -d)")
    raw_bytes = _make_rootdisk(root, out / ROOTDISK_NAME, key)

    # the initramfs: just enough to mount the disk
    prog.step("writing initramfs")
    raw = out / "initrd.cpio"
    with open(raw, "wb") as f:
        w = CpioWriter(f)
        w.dir("dev", 0o755)
        w.chardev("dev/console", 5, 1)
        w.chardev("dev/null", 1, 3, 0o666)
        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "etc", "etc/heapballoon",
                  "lib", "lib/modules", "lib/modules/heapballoon", "newroot", "ro", "rw"):
            w.dir(d, 0o755)
        w.file("bin/busybox", bb.read_bytes(), 0o755)
        for a in applets:
            name = a.lstrip("/")
            if name != "bin/busybox" and name.split("/")[0] in ("bin", "sbin", "usr"):
                w.parents(name)
                w.symlink(name, "/bin/busybox")
        w.path(root / "init", "init")
        for p in ("etc/heapballoon/modules", "etc/heapballoon/image.json"):
            w.path(root / p, p)
        w.tree(mdir, "lib/modules/heapballoon")
        w.close()
    with open(raw, "rb") as fin, gzip.open(out / "initrd.img", "wb", compresslevel=6) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    initramfs_raw = raw.stat().st_size
    raw.unlink()

    with open(out / "probe.cpio", "wb") as f:
        w = CpioWriter(f)
        w.dir("dev", 0o755)
        w.chardev("dev/console", 5, 1)
        w.dir("bin")
        w.file("bin/busybox", bb.read_bytes(), 0o755)
        w.file("init", b"#!/bin/busybox sh\n/bin/busybox echo HEAPBALLOON-PROBE-OK\n"
                       b"/bin/busybox poweroff -f\n", 0o755)
        w.close()

    manifest = {
        "key": key,
        "kernel_version": kver,
        "kernel_package": kernel_pkg,
        "packages": packages,
        "jdk": str(jdk),
        "jre_modules": JRE_MODULES,
        "modules": [n for n, _ in mods],
        "agent_jar": str(jar) if jar else None,
        "agent_native": str(native) if native else None,
        "rootfs_bytes": raw_bytes,
        "rootdisk_bytes": (out / ROOTDISK_NAME).stat().st_size,
        "initramfs_bytes": initramfs_raw,
        "initrd_bytes": (out / "initrd.img").stat().st_size,
        "inputs": inputs,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(root)
    shutil.rmtree(kdir)


def _make_rootdisk(root: Path, img: Path, key: str) -> int:
    """Write ``root`` as a journal-less ext4 image at ``img`` (mke2fs -d); bytes of file data in it.

    No root privileges or loop devices: mke2fs copies the tree itself. Sized to the tree plus
    ~10 % and 16 MiB (metadata, and room nobody writes to: the guest mounts it read-only).
    Files keep their owners (all root when the image is built as root).
    """
    data = 0
    blocks = 0
    inodes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        inodes += 1 + len(filenames) + sum(1 for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
        blocks += 1
        for f in filenames:
            st = os.lstat(os.path.join(dirpath, f))
            if os.path.isfile(os.path.join(dirpath, f)) and not os.path.islink(os.path.join(dirpath, f)):
                data += st.st_size
            blocks += (st.st_size + 4095) // 4096
    if os.geteuid() == 0:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in [dirpath] + [os.path.join(dirpath, x) for x in filenames + dirnames]:
                st = os.lstat(n)
                if st.st_uid or st.st_gid:
                    os.lchown(n, 0, 0)
    size_mib = (blocks * 4096 * 11 // 10 >> 20) + 16
    uuid = hashlib.sha256(key.encode()).hexdigest()[:32]
    uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:32]}"
    mke2fs = shutil.which("mke2fs") or shutil.which("mkfs.ext4") or "/sbin/mke2fs"
    with open(img, "wb") as f:
        f.truncate(size_mib << 20)
    _run([mke2fs, "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-N", str(inodes + 2048),
          "-O", "^has_journal,^resize_inode", "-L", ROOTDISK_LABEL, "-U", uuid,
          "-E", f"hash_seed={uuid},root_owner=0:0", "-d", str(root), str(img)],
         "mke2fs -d (e2fsprogs)")
    e2fsck = shutil.which("e2fsck") or shutil.which("fsck.ext4")
    if e2fsck:
        _run([e2fsck, "-fn", str(img)], "e2fsck -fn of the root disk")
    return data

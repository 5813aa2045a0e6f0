# libvirt-snapshot-exporter: run `make demo` or `make test` as root on a Debian machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# What the demo needs: libvirt, QEMU, what builds libvirt-python, and what builds the guest.
DEBIAN_PACKAGES := libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils \
	libvirt-dev libvirt-clients pkg-config gcc python3-dev python3-venv busybox-static cpio
# Debian's libvirt exporter, which `make bench` measures beside ours.
BENCH_PACKAGES := prometheus-libvirt-exporter
# The real Prometheus tools, node_exporter, Alertmanager and VictoriaMetrics the tests run (on a
# systemd host their packages start services: the demo installs none of them).
TEST_PACKAGES := prometheus prometheus-node-exporter prometheus-alertmanager \
	prometheus-libvirt-exporter victoria-metrics curl openssl systemd fuse3
# Rootful podman and mmdebstrap, for the container test (scripts/container-base.sh).
CONTAINER_PACKAGES := podman runc slirp4netns containernetworking-plugins \
	golang-github-containernetworking-plugin-dnsname fuse-overlayfs uidmap iptables mmdebstrap
# Headless Chromium, for the operation page's browser test (tests/unit).
BROWSER_PACKAGES := chromium

.PHONY: deps test-deps venv test check lint unit demo bench clean

# Installs only what is missing.
define install-missing
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

deps:  ## Debian packages: libvirt, QEMU, the demo guest's
	$(call install-missing,$(DEBIAN_PACKAGES))

test-deps: deps  ## and Prometheus' tools, podman for the container test, chromium for the page test
	$(call install-missing,$(TEST_PACKAGES) $(CONTAINER_PACKAGES) $(BROWSER_PACKAGES))

$(VENV)/.installed: pyproject.toml devtools/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' -e ./devtools
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check exporter devtools tests scripts benchmarks

unit: venv
	$(VENV)/bin/pytest -q tests/unit

# The inner loop (about half a minute): ruff and the unit tests but the two slow files, which start
# real exporter processes (test_hostile_process.py, 50 s) or Chromium (test_operation_page_browser.py);
# `make test` runs everything.
CHECK_SKIPS := --ignore=tests/unit/test_hostile_process.py --ignore=tests/unit/test_operation_page_browser.py
check: venv  ## ruff and the fast unit tests, no libvirt needed
	$(VENV)/bin/ruff check exporter devtools tests scripts benchmarks
	$(VENV)/bin/pytest -q -n 2 $(CHECK_SKIPS) tests/unit

test: test-deps venv  ## the whole suite, real libvirtd and QEMU guests and the container included
	bash scripts/libvirtd-up.sh
	$(VENV)/bin/ruff check exporter devtools tests scripts benchmarks
	# Unit and bundle tests (no libvirtd, no guest) on two workers, a file's tests on one; beside
	# them, the container tests (mostly waiting for podman: its base image built, the compose
	# services started), their output printed after. Then a real libvirtd and its guests, one
	# test at a time.
	{ bash scripts/container-base.sh up && eval "$$(bash scripts/container-base.sh env)" && \
		$(VENV)/bin/pytest -v -rfEs --durations=10 tests/container; } \
		> $(VENV)/container-tests.log 2>&1 & containers=$$!; \
	$(VENV)/bin/pytest -v -rfEs -n 2 --dist loadfile tests/unit tests/bundle; unit=$$?; \
	wait $$containers; container=$$?; cat $(VENV)/container-tests.log; \
	[ $$unit = 0 ] && [ $$container = 0 ] && \
		$(VENV)/bin/pytest -v -rfEs --durations=25 tests/integration tests/e2e

demo: deps venv  ## a demo guest, snapshots now and then, the exporter on localhost:9966
	bash scripts/libvirtd-up.sh
	$(PY) scripts/demo.py

bench: deps venv  ## scrape latency and timing error during real snapshots, against Debian's exporter
	$(call install-missing,$(BENCH_PACKAGES))
	bash scripts/libvirtd-up.sh
	$(PY) benchmarks/snapshot_latency.py

clean:
	rm -rf $(VENV) *.egg-info exporter/*.egg-info .pytest_cache .ruff_cache

.PHONY: test-libvirt11
# Those that do not depend on libvirt's version are marked host_only and run in `make test` alone.
test-libvirt11: deps venv  ## the integration tests against libvirt 11.3 / QEMU 10.0 (Debian trixie in a chroot)
	bash scripts/libvirt11-chroot.sh up
	eval "$$(bash scripts/libvirt11-chroot.sh env)" && \
		$(VENV)/bin/pytest -v -rfEs --durations=25 -m "not host_only" tests/integration

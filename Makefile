# vmdnet: build, regress (OpenBSD bsd.regress.mk style), bench, lint, asan.
#
# Each run-regress-* target prints SUCCESS, FAIL or SKIPPED (with a reason) and
# the summary fails when any target failed.

PYTHON ?= python3
PYTEST ?= $(PYTHON) -m pytest
PYTEST_FLAGS ?= -q -rs
CC ?= gcc
CWARN = -Wall -Wextra -Wconversion -Wno-unused-parameter -std=gnu11
CSRC = $(filter-out csrc/vn_version.c,$(wildcard csrc/*.c))

REGRESS_TARGETS = run-regress-unit run-regress-ctest run-regress-asan run-regress-config \
	run-regress-offload-oracle run-regress-e2e run-regress-daemon

.PHONY: all deps demo install regress bench lint asan clean $(REGRESS_TARGETS)

all:
	$(PYTHON) -m pip install -q setuptools wheel cffi
	$(PYTHON) -m pip install -q --no-build-isolation -e '.[test]'

# System packages the tests and the demo use (Debian 12, as root).
DEB_PACKAGES = build-essential python3-dev iproute2 ethtool mandoc kmod qemu-system-x86 \
	busybox-static cpio iperf3 dpdk dpdk-dev librte-net-null23 libseccomp-dev \
	openvswitch-switch-dpdk
deps:
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		$(DEB_PACKAGES) || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends $(DEB_PACKAGES); }

# The main job: a real guest on vionet, end to end (see tests/demo.py).
demo: deps all
	$(PYTHON) tests/demo.py

install:
	$(PYTHON) -m pip install -q .

# Every regress target runs even if an earlier one failed; the summary decides.
# Sets itself up first (packages, build), so it is one command on a fresh machine.
regress: deps all
	@rm -f .regress.log
	@for t in $(REGRESS_TARGETS); do $(MAKE) -s $$t || echo "FAIL $$t" >> .regress.log; done
	@if [ -f .regress.log ]; then echo "regress: FAILED:"; cat .regress.log; rm -f .regress.log; exit 1; fi
	@echo "regress: all targets passed"

# A helper: run pytest on $(1), then print the bsd.regress.mk-style verdict.
define pytest_target
	@echo "==> $@"
	@$(PYTEST) $(PYTEST_FLAGS) $(1) > .$@.out 2>&1; rc=$$?; cat .$@.out; \
	skipped=$$(grep -Eo '[0-9]+ skipped' .$@.out | head -1); rm -f .$@.out; \
	if [ $$rc -eq 0 ]; then echo "SUCCESS $@ ($${skipped:-0 skipped})"; \
	elif [ $$rc -eq 5 ]; then echo "SKIPPED $@ (no tests collected)"; \
	else echo "FAIL $@"; exit 1; fi
endef

run-regress-unit:
	$(call pytest_target,tests/unit)

# vm.conf regress pairs (tests/config/NN-x.conf + NN-x.ok), as regress/usr.sbin/vmd/config.
run-regress-config:
	$(call pytest_target,tests/unit/test_config.py)

run-regress-offload-oracle:
	$(call pytest_target,tests/oracle)

# The C test programs (csrc/tests/test_*.c, each with its own main), without
# Python: once with the normal flags, once under AddressSanitizer + UBSan.
CTESTS = $(wildcard csrc/tests/test_*.c)
CTEST_SRC = $(CSRC) csrc/vn_version.c
ASAN_FLAGS = -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

define run_ctests
	@echo "==> $@"
	@ok=1; for t in $(CTESTS); do b=$${t%.c}$(2).bin; \
		$(CC) $(1) $(CWARN) -Icsrc -DVN_VERSION='"ctest"' -o $$b $$t $(CTEST_SRC) \
		&& $$b || { echo "$$t failed"; ok=0; }; done; \
	if [ $$ok = 1 ]; then echo "SUCCESS $@"; else echo "FAIL $@"; exit 1; fi
endef

run-regress-ctest:
	$(call run_ctests,-O2,)

# End to end: the test guest (QEMU/TCG) and DPDK virtio_user as clients of vionet.
run-regress-e2e:
	$(call pytest_target,tests/e2e --ignore-glob='tests/e2e/test_daemon*')

# vmdnetd + vmdnetctl: QEMU guests on a switch, privilege separation, restarts, reload.
run-regress-daemon:
	$(call pytest_target,tests/e2e/test_daemon.py tests/e2e/test_daemon_external.py \
		tests/e2e/test_daemon_lladdr_dhcp.py)

run-regress-asan: asan

asan:
	$(call run_ctests,$(ASAN_FLAGS),-asan)

# Benchmarks: tables printed, JSON under bench/results/ (never asserted).
bench:
	$(PYTHON) -m bench.offload
	$(PYTHON) -m bench.rsc
	$(PYTHON) -m bench.vionet

lint:
	$(PYTHON) -m ruff check vmdnet tests bench
	@out=$$(mandoc -Tlint -Wwarning man/*.[1-9] 2>&1); if [ -n "$$out" ]; then echo "$$out"; exit 1; fi

clean:
	rm -rf build dist *.egg-info csrc/tests/*.bin vmdnet/_native/_vn.c \
		vmdnet/_native/*.o vmdnet/_native/*.so bench/results .pytest_cache .ruff_cache

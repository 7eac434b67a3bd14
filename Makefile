# Thin wrapper over CMake: set-up, build, run, test. See README.md.
.PHONY: all deps build run test test-asan test-tsan check demo bench clean

BUILD      ?= build
CONFIG     ?= config/lifeline.json
WERROR     ?= OFF
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=

# Debian packages the build and the test suite need.
DEPS = gcc make cmake pkg-config libuv1-dev libcjson-dev libcmocka-dev libhttp-parser-dev \
       libcurl4-openssl-dev python3 iproute2 nftables etcd-server etcd-client

all: build

# $(call install_missing,PACKAGES,IF_NOT_ROOT): installs the Debian packages
# that are missing when run as root; otherwise prints the apt-get line, then
# runs IF_NOT_ROOT (`exit 1` for what the build needs).
define install_missing
	@missing=$$(for p in $(1); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "Missing packages: $$missing"; \
	    echo "Install them as root:  apt-get install -y $$missing"; \
	    $(2); \
	  else \
	    echo "Installing: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  fi; \
	fi
endef

deps:
	$(call install_missing,$(DEPS),exit 1)

build: deps
	cmake -S . -B $(BUILD) -DLIFELINE_WERROR=$(WERROR) $(CMAKE_ARGS)
	cmake --build $(BUILD) -j $(JOBS)

run: build
	./$(BUILD)/lifeline -c $(CONFIG)

test: build
	cd $(BUILD) && ctest --output-on-failure --timeout 600 $(CTEST_ARGS)

# The same suite under AddressSanitizer + UndefinedBehaviorSanitizer.
test-asan:
	$(MAKE) test BUILD=build-asan CMAKE_ARGS="-DLIFELINE_ASAN=ON -DCMAKE_BUILD_TYPE=Debug"

# The threaded code under ThreadSanitizer.
test-tsan:
	$(MAKE) test BUILD=build-tsan CMAKE_ARGS="-DLIFELINE_TSAN=ON -DCMAKE_BUILD_TYPE=Debug"

check: build
	./$(BUILD)/lifeline --check -c $(CONFIG)

# Replays a client host crash and return (cases 2 and 3 of the fault tests)
# in network namespaces, first without lifeline, then through it. Needs root.
demo: build
	LIFELINE_BIN=$(BUILD)/lifeline python3 tests/fault/demo.py --with-lifeline

# lifeline against a direct connection and HAProxy (plain and splice), interleaved rounds,
# into bench/RESULTS.md. QUICK=1: one short round. Never part of `make test`.
BENCH_DEPS = iperf3 redis-server redis-tools wrk nginx-light haproxy

bench: build
	$(call install_missing,$(BENCH_DEPS),echo "(the rows that need them read n/a)")
	LIFELINE_BIN=$(BUILD)/lifeline python3 bench/run.py $(if $(filter-out 0,$(QUICK)),--quick)

clean:
	rm -rf build build-asan build-tsan

# ---- fuzz: libFuzzer targets (tests/fuzz/) ----
# Builds every tests/fuzz/fuzz_X.c with clang, ASan and UBSan into FUZZ_BUILD,
# then runs each for FUZZ_SECONDS on the seeds in tests/fuzz/corpus/X/ (read
# only). FUZZ_TARGETS="fuzz_config" runs only those. Fails on any crash, leak
# or sanitizer report; prints a summary line per target and where the
# artifacts are.
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_DEPS = clang libclang-rt-14-dev make cmake pkg-config libuv1-dev libcjson-dev \
            libhttp-parser-dev

.PHONY: fuzz fuzz-clean
fuzz:
	$(call install_missing,$(FUZZ_DEPS),exit 1)
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DLIFELINE_FUZZ=ON -DLIFELINE_WERROR=$(WERROR) $(CMAKE_ARGS)
	cmake --build $(FUZZ_BUILD) -j $(JOBS)
	tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean: fuzz-clean
fuzz-clean:
	rm -rf $(FUZZ_BUILD)
# ---- end fuzz ----

# ---- soak: lifeline under chaos for SOAK_SECONDS (tests/soak/soak.py) ----
# Clean, half-closed, reset and non-reading sessions, takeovers, fixed-port
# returns, admin kills, reloads and a flapping upstream, all at once; then
# every session checked, descriptors and RSS back to their baselines, no
# sanitizer report, exit 0 on SIGTERM. Never part of `make test`.
SOAK_SECONDS ?= 600

.PHONY: soak
soak: build
	LIFELINE_BIN=$(BUILD)/lifeline python3 tests/soak/soak.py --seconds $(SOAK_SECONDS)
# ---- end soak ----

# ---- format: the C sources as .clang-format says ----
# `make format` rewrites them; `make format-check` (CI) fails on any file
# that differs, naming it.
FORMAT_FILES = $(shell git ls-files 'src/*.c' 'include/*.h' 'tests/unit/*.c' 'tests/fuzz/*.c' 'bench/*.c')

.PHONY: format format-check
format:
	$(call install_missing,clang-format,exit 1)
	clang-format -i $(FORMAT_FILES)

format-check:
	$(call install_missing,clang-format,exit 1)
	clang-format --dry-run --Werror $(FORMAT_FILES)
# ---- end format ----

# ---- test-container: the shipped packaging run for real (tests/container/) ----
# The image, the k8s sidecar (podman kube play), the compose files (one
# lifeline; two with etcd: podman-compose), the systemd unit under a real systemd and the Debian
# package, in that order; each test is tests/container/test_X.py.
# Installs podman, runc, mmdebstrap, podman-compose and debhelper when run as
# root and missing; skips with a message where no container engine can be
# set up. CONTAINER_TESTS="image deb" runs only those.
CONTAINER_DEPS  = podman runc mmdebstrap podman-compose debhelper
CONTAINER_TESTS ?= image kube compose compose_cluster systemd deb

.PHONY: test-container
test-container:
	$(call install_missing,$(CONTAINER_DEPS),echo "test-container: skipped: missing $(CONTAINER_DEPS)"; exit 0)
	@start=$$(date +%s); failed=""; \
	  for t in $(CONTAINER_TESTS); do \
	    python3 tests/container/test_$$t.py; rc=$$?; \
	    if [ $$rc -eq 77 ]; then echo "test-container: $$t skipped (see above)"; \
	    elif [ $$rc -ne 0 ]; then failed="$$failed $$t"; fi; \
	  done; \
	  echo "test-container: done in $$(( $$(date +%s) - start )) s"; \
	  if [ -n "$$failed" ]; then echo "test-container: FAILED:$$failed"; exit 1; fi
# ---- end test-container ----

# ---- deb: the Debian package (debian/) ----
# Builds DEB_BUILD/lifeline_VERSION_ARCH.deb (build-deb/lifeline_0.1.0_amd64.deb
# on amd64) with dpkg-buildpackage out of a copy of the working tree (the
# files git tracks or would track, as they are now), so that the source tree
# gets no build files and its parent directory no .deb; prints the path.
# A failed build leaves its copy in DEB_BUILD/src to look into.
# VERSION is CMakeLists.txt's project(VERSION): debian/rules fails the build
# when debian/changelog says another. Installs the build dependencies
# (debian/control's Build-Depends) when run as root and missing.
DEB_BUILD        ?= build-deb
DEB_CMAKE_VERSION = $(shell sed -n 's/^project(lifeline VERSION \([^ )]*\).*/\1/p' CMakeLists.txt)
DEB_ARCH          = $(shell dpkg --print-architecture)
DEB_FILE          = $(DEB_BUILD)/lifeline_$(DEB_CMAKE_VERSION)_$(DEB_ARCH).deb
DEB_DEPS          = build-essential dpkg-dev $(shell awk '/^[^ ]/{f=/^Build-Depends:/} f' debian/control \
                      | sed 's/^Build-Depends://' | tr ',' '\n' | sed 's/(.*)//; s/\[.*\]//; s/<.*>//; s/[[:space:]]//g' \
                      | sed 's/^debhelper-compat$$/debhelper/; s/^dh-sequence-.*/debhelper/' | sort -u)

.PHONY: deb deb-clean
deb:
	$(call install_missing,$(DEB_DEPS),exit 1)
	@test -n "$(DEB_CMAKE_VERSION)" || { echo "deb: no project(lifeline VERSION X.Y.Z) in CMakeLists.txt" >&2; exit 1; }
	@start=$$(date +%s); src=$(DEB_BUILD)/src/lifeline-$(DEB_CMAKE_VERSION); \
	  set -e; rm -rf $(DEB_BUILD); mkdir -p $$src; \
	  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	    git ls-files -z --cached --others --exclude-standard \
	      | tar --null --files-from=- --ignore-failed-read -cf - | tar -xf - -C $$src; \
	  else \
	    tar --exclude=./build --exclude='./build-*' -cf - . | tar -xf - -C $$src; \
	  fi; \
	  (cd $$src && dpkg-buildpackage -us -uc -b); \
	  mv $(DEB_BUILD)/src/*.deb $(DEB_BUILD)/src/*.buildinfo $(DEB_BUILD)/src/*.changes $(DEB_BUILD)/; \
	  rm -rf $(DEB_BUILD)/src; \
	  test -f $(DEB_FILE); \
	  echo "deb: built in $$(( $$(date +%s) - start )) s: $(DEB_FILE)"

clean: deb-clean
deb-clean:
	rm -rf $(DEB_BUILD)
# ---- end deb ----

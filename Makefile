# Thin wrapper over CMake: set-up, build, run, test. See README.md.
.PHONY: all deps build run test test-asan test-tsan check demo bench clean

BUILD      ?= build
CONFIG     ?= config/lifeline.json
WERROR     ?= OFF
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=

# Debian packages the build and the test suite need.
DEPS = gcc make cmake pkg-config libuv1-dev libcjson-dev libcmocka-dev libhttp-parser-dev python3 \
       iproute2 nftables

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

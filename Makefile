# obi — two commands matter: `make run` and `make test`. Both set up what is
# missing first (Debian packages, a .venv with obi installed).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Build: clang, libbpf headers, bpftool. Tests and benchmarks: servers and clients. The kernel
# matrix (tests/matrix): QEMU, and busybox and kmod for virtme-ng's initramfs and modules.
APT_PACKAGES := clang llvm libbpf-dev libelf-dev zlib1g-dev bpftool pkg-config make gcc \
	nginx-light wrk curl iproute2 libcap2-bin golang-go redis-server memcached postgresql \
	mariadb-server mariadb-client nghttp2-client python3-grpcio valgrind prometheus \
	podman runc debootstrap qemu-system-x86 busybox-static kmod
INSTALLED := $(VENV)/.installed
# the modules setup.py compiles with mypyc (MODULES in src/obi/compiled.py) are sources of the build too
COMPILED := src/obi/traces/records.py src/obi/traces/model.py src/obi/protocols/base.py \
	src/obi/protocols/http.py src/obi/export/fanout.py src/obi/export/metrics.py src/obi/export/encode.py
SOURCES := pyproject.toml constraints.txt setup.py src/obi/compiled.py $(COMPILED) $(wildcard bpf/*.c bpf/*.h csrc/*.c csrc/*.h src/_cffi_src/*.py)

.PHONY: run test bench setup deps kernels lint unit vmlinux clean image

run: setup
	@echo "obi: instrumenting every process with a listening TCP port (override with OTEL_EBPF_OPEN_PORT=...)"
	OTEL_EBPF_OPEN_PORT="$${OTEL_EBPF_OPEN_PORT:-1-65535}" $(VENV)/bin/obi $(ARGS)

test: setup kernels
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -ra $(PYTEST_ARGS)

bench: setup
	rm -f build/bench-targets.jsonl
	$(PY) bench/http_bench.py $(BENCH_ARGS)
	@echo "replay of recorded nginx records through the user-space path (bench/replay.py):"
	$(PY) bench/replay.py run bench/records/nginx-http1.bin.gz --repeat 3
	$(PY) bench/replay.py instructions bench/records/nginx-http1.bin.gz
	@echo "obi when nothing happens (bench/idle.py):"
	$(PY) bench/idle.py
	@echo "from obi's start to a running service's first span at the collector (bench/first_span.py):"
	$(PY) bench/first_span.py
	@echo "the peer line: Flask under gunicorn bare, with the OpenTelemetry SDK, with obi (bench/peer.py):"
	$(PY) bench/peer.py
	@echo "a Prometheus scrape of obi's endpoint (bench/scrape.py):"
	$(PY) bench/scrape.py
	@echo "the syscall hook sets this kernel allows, against each other (bench/hooks.py):"
	$(PY) bench/hooks.py
	$(PY) bench/targets.py

setup: deps $(INSTALLED)

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(INSTALLED): $(SOURCES)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "obi needs Python >= 3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt --upgrade pip setuptools wheel "cffi>=1.17" "mypy>=1.11"
	$(PY) -m pip install -q -c constraints.txt --no-build-isolation -e '.[test]'
	touch $@

# The container image (podman, on a debootstrapped Debian 12 base: no registry needed)
image: deps
	$(PYTHON) tools/image/build.py $(IMAGE_ARGS)

# the Debian kernels tests/matrix boots (build/kernels/, fetched once)
kernels: deps
	tools/kernels

vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > vmlinux/vmlinux.h

clean:
	rm -rf build src/obi/bpf src/obi/ebpf/*.bpf.o src/obi/ebpf/_libbpf_cffi*.so src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	rm -f src/*__mypyc*.so src/obi/_compiled_sources.json $(patsubst %.py,%.cpython-*.so,$(COMPILED)) src/obi/_http1*.so

# The two commands: `make run` serves the embedded default config,
# `make test` runs the whole suite. Each sets up what it needs, installing the
# exact versions locked in requirements/ (docs/development.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
# What `make run` installs and nothing more: the suite serves from it to prove
# that the runtime dependencies alone are enough (tests/test_runtime_install.py).
RUNTIME_VENV ?= .venv-runtime
# The Triton server the tests and benchmarks call (requirements/triton-server.in).
TRITON_VENV ?= .venv-triton

# The CPU build of torch (requirements/torch.txt): PyPI has only the CUDA builds, so
# its file's hash is written here (PyTorch's CPU index serves the same file).
TORCH_CPU := torch==2.13.0+cpu
TORCH_CPU_SHA256 := 6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b

LOCKS := requirements/build.txt requirements/runtime.txt requirements/dev.txt

.PHONY: run test lint check bench gpu-check fuzz lock proto image redis-server promtool h2load container-tools haproxy clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Every wheel is checked against the lock's hashes; the project itself is
# installed editable, built with the locked setuptools. $(1): the venv's python,
# $(2): the lock file.
define install_locked
	$(1) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/build.txt
	$(1) -m pip install --quiet --disable-pip-version-check --require-hashes -r $(2)
	$(1) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(1) -m pip check --disable-pip-version-check >/dev/null
endef

# Reinstalled whenever pyproject.toml or a lock changes.
$(VENV)/.installed: pyproject.toml requirements/build.txt requirements/runtime.txt | $(PY)
	$(call install_locked,$(PY),requirements/runtime.txt)
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(LOCKS) | $(PY)
	$(call install_locked,$(PY),requirements/dev.txt)
	touch $@ $(VENV)/.installed

# Made afresh from the runtime lock alone, so nothing the dev extras bring can hide.
$(RUNTIME_VENV)/.installed: pyproject.toml requirements/build.txt requirements/runtime.txt
	rm -rf $(RUNTIME_VENV)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(call install_locked,$(RUNTIME_VENV)/bin/python,requirements/runtime.txt)
	touch $@

# The server side of the triton backend's tests and benchmark: PyTriton, in a venv
# of its own (numpy<2), made from its lock.
$(TRITON_VENV)/.installed: requirements/build.txt requirements/triton-server.txt
	rm -rf $(TRITON_VENV)
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/build.txt
	$(TRITON_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/triton-server.txt
	touch $@

# torch for the `type: torch` backend's tests: the CPU build locked in
# requirements/torch.txt. pip finds it on the machines CI runs on (a local wheel
# directory); elsewhere point pip at PyTorch's CPU index
# (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu). When it cannot be
# installed, the torch tests are skipped with the reason, except where
# GATEWAY_REQUIRE_TORCH=1 (.ci/run) makes that a failure.
$(VENV)/.installed-torch: requirements/torch.txt $(VENV)/.installed-dev
	@if $(PIP) --require-hashes -r requirements/torch.txt; then touch $@; \
	  else echo "warning: torch could not be installed: the torch backend's tests will be skipped"; fi

run: $(VENV)/.installed
	$(VENV)/bin/gateway serve

check: $(VENV)/.installed
	$(VENV)/bin/gateway check config/gateway.yaml

test: $(VENV)/.installed-dev $(VENV)/.installed-torch $(RUNTIME_VENV)/.installed $(TRITON_VENV)/.installed redis-server promtool container-tools haproxy
	$(PY) -m pytest -q

# ruff (lint and format) over the Python trees, mypy (strict) over the package.
lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check gateway tests testkit loadtests models fuzz deploy
	$(VENV)/bin/ruff format --check gateway tests testkit loadtests models fuzz deploy
	$(VENV)/bin/mypy
	@# A type: ignore names its error code and says why, after it on the same line.
	@! grep -rn --include='*.py' 'type: ignore' gateway | grep -v '^gateway/api/proto/' \
	  | grep -v 'type: ignore\[[a-z, -]*\]  # .' \
	  || { echo 'each type: ignore above needs [code] and "  # why" after it'; exit 1; }

bench: $(VENV)/.installed-dev $(TRITON_VENV)/.installed h2load
	$(PY) loadtests/bench.py

# GPU providers against CPU on the shipped models (GPU_CHECK_ARGS="--io-binding"); installs only into a new venv, never over the gpu extra.
gpu-check:
	@test -f $(VENV)/.installed || $(MAKE) --no-print-directory $(VENV)/.installed
	$(PY) loadtests/gpu_check.py $(GPU_CHECK_ARGS)

# The coverage-guided fuzz target of the tensor decoders (atheris): FUZZ_SECONDS, 120 by default.
fuzz: $(VENV)/.installed-dev
	$(PY) fuzz/fuzz_decoders.py -max_total_time=$(or $(FUZZ_SECONDS),120)

# Re-resolves requirements/ from pyproject.toml's ranges with uv, keeping every
# pin the ranges still allow. Upgrades: `make lock UPGRADE=--upgrade` (all) or
# `make lock UPGRADE="--upgrade-package numpy"` (one). One universal resolution
# (any OS, Python >= 3.11); the runtime lock takes the dev lock's versions, so
# tests run what `make run` serves with.
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --universal --generate-hashes \
	--python-version 3.11 --custom-compile-command "make lock" $(UPGRADE)
lock: $(VENV)/.installed-dev
	$(UV_COMPILE) pyproject.toml --extra dev -o requirements/dev.txt
	$(UV_COMPILE) pyproject.toml -c requirements/dev.txt -o requirements/runtime.txt
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(UV_COMPILE) - -c requirements/dev.txt -o requirements/build.txt
	$(UV_COMPILE) requirements/torch.in -c requirements/dev.txt -o requirements/torch.txt
	printf '%s\n' "$(TORCH_CPU) ; sys_platform == 'linux' and platform_machine == 'x86_64' and python_full_version < '3.12' \\" \
	  "    --hash=sha256:$(TORCH_CPU_SHA256)" "    # the CPU build of torch, appended by make lock" >> requirements/torch.txt
	$(VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_35 --custom-compile-command "make lock" $(UPGRADE) \
	  requirements/triton-server.in -o requirements/triton-server.txt

# The gRPC stubs are generated from gateway/api/proto/grpc_predict_v2.proto and
# committed. Ours go into a descriptor pool of their own: tritonclient puts the
# same `inference.*` names into protobuf's default pool, and both must load in
# one process.
PROTO := gateway/api/proto/grpc_predict_v2.proto
proto: $(VENV)/.installed-dev
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)
	sed -i 's/_descriptor_pool.Default().AddSerializedFile(/_descriptor_pool.DescriptorPool().AddSerializedFile(/' \
	  $(PROTO:.proto=_pb2.py)

# The container image (Dockerfile), built with podman: the tools, a local Debian
# base image and this machine's podman settings come from the build script
# (docs/deploy.md). Layer-cached: seconds when nothing changed.
image:
	$(PYTHON) deploy/build_image.py

# Tools the suite runs for real, from Debian's packages when missing.
apt_install = command -v $(1) >/dev/null 2>&1 || \
	{ (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2)) >/dev/null 2>&1 \
	  || echo "warning: $(1) is not installed and could not be installed"; }

# Redis-backed tests need the real server binary.
redis-server:
	@$(call apt_install,redis-server,redis-server)

# The alert and recording rules are checked with promtool (tests/observe/test_monitoring_files.py).
promtool:
	@$(call apt_install,promtool,prometheus)

# The image tests (tests/deploy/) build and run containers: podman with runc, and
# mmdebstrap for the local base image (deploy/build_image.py installs what is
# still missing).
container-tools:
	@$(call apt_install,podman,podman runc mmdebstrap netavark aardvark-dns iptables uidmap)

# The balancer in front of the replicas (tests/deploy/test_replicas.py).
haproxy:
	@$(call apt_install,haproxy,haproxy)

# The gRPC benchmark loads with nghttp2's h2load (a Python client would be the bottleneck).
h2load:
	@$(call apt_install,h2load,nghttp2-client)

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) $(TRITON_VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

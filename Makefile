# The two commands: `make run` serves the embedded default config,
# `make test` runs the whole suite. Each sets up what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test bench check proto redis-server h2load clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalled whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/gateway serve

check: $(VENV)/.installed
	$(VENV)/bin/gateway check config/gateway.yaml

test: $(VENV)/.installed-dev redis-server
	$(PY) -m pytest -q

bench: $(VENV)/.installed-dev h2load
	$(PY) loadtests/bench.py

# The gRPC stubs are generated from gateway/api/proto/grpc_predict_v2.proto and
# committed. Ours go into a descriptor pool of their own: tritonclient puts the
# same `inference.*` names into protobuf's default pool, and both must load in
# one process.
PROTO := gateway/api/proto/grpc_predict_v2.proto
proto: $(VENV)/.installed-dev
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)
	sed -i 's/_descriptor_pool.Default().AddSerializedFile(/_descriptor_pool.DescriptorPool().AddSerializedFile(/' \
	  $(PROTO:.proto=_pb2.py)

# Redis-backed tests need the real server binary; install Debian's if we can.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null 2>&1 \
	    || echo "warning: redis-server is not installed and could not be installed"; }

# The gRPC benchmark loads with nghttp2's h2load (a Python client would be the bottleneck).
h2load:
	@command -v h2load >/dev/null 2>&1 || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client) >/dev/null 2>&1 \
	    || echo "warning: h2load is not installed and could not be installed; gRPC load comes from a Python client"; }

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# The gateway's container image (docs/deploy.md).
#
#   docker build -t inference-gateway .                        # CPU (the default target)
#   docker build --target gpu -t inference-gateway:gpu .       # onnxruntime-gpu on CUDA + cuDNN
#   make image                                                 # the CPU image, with podman
#
# Dependencies come from the hash-locked requirements/ (pip --require-hashes);
# the runtime stage holds a virtualenv, the package, the default config and the
# models, and runs as an unprivileged user on a read-only root filesystem
# (only /tmp needs to be writable).

# The CPU image's base: any Debian-like image whose `python3` is Python 3.11+.
ARG BASE_IMAGE=python:3.11-slim
# The GPU image's base: CUDA and cuDNN runtime libraries that the onnxruntime-gpu
# release below was built against (see onnxruntime's CUDA execution provider docs).
ARG GPU_BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# The `gpu` extra is not locked (docs/development.md): this release replaces onnxruntime.
ARG ONNXRUNTIME_GPU_VERSION=1.31.1

# ---------------------------------------------------------------------------
# build: the virtualenv, from the locks alone.
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
SHELL ["/bin/sh", "-eu", "-c"]
RUN python3 -m venv /opt/gateway
WORKDIR /src
# The locks first: the dependency layer is rebuilt only when they change.
COPY requirements/build.txt requirements/runtime.txt requirements/
RUN /opt/gateway/bin/python -m pip install --require-hashes -r requirements/build.txt \
 && /opt/gateway/bin/python -m pip install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
# The project itself, built with the locked setuptools: nothing unpinned is fetched.
# Then what serving never runs: pip, setuptools and the packages' own test suites.
RUN /opt/gateway/bin/python -m pip install --no-deps --no-build-isolation . \
 && /opt/gateway/bin/python -m pip check \
 && /opt/gateway/bin/python -m pip uninstall --yes pip setuptools \
 && find /opt/gateway/lib -type d -name tests -prune -exec rm -rf {} +

# ---------------------------------------------------------------------------
# gpu-build: the same virtualenv on the CUDA base, with onnxruntime-gpu.
FROM ${GPU_BASE_IMAGE} AS gpu-build
ARG ONNXRUNTIME_GPU_VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/sh", "-eu", "-c"]
# The distribution's Python (3.12 on Ubuntu 24.04); its version follows the base.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/gateway
WORKDIR /src
COPY requirements/build.txt requirements/runtime.txt requirements/
RUN /opt/gateway/bin/python -m pip install --require-hashes -r requirements/build.txt \
 && /opt/gateway/bin/python -m pip install --require-hashes -r requirements/runtime.txt \
 && /opt/gateway/bin/python -m pip uninstall --yes onnxruntime \
 && /opt/gateway/bin/python -m pip install --no-deps "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
# No `pip check`: onnxruntime-gpu provides the `onnxruntime` module under another
# distribution name, which pip check would report as onnxruntime missing.
RUN /opt/gateway/bin/python -m pip install --no-deps --no-build-isolation . \
 && /opt/gateway/bin/python -m pip uninstall --yes pip setuptools \
 && find /opt/gateway/lib -type d -name tests -prune -exec rm -rf {} +

# ---------------------------------------------------------------------------
# gpu: `--target gpu`. Run with the NVIDIA container toolkit (`--gpus all`);
# backends list `providers: [tensorrt, cuda, cpu]` and take the first one present.
FROM ${GPU_BASE_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/sh", "-eu", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 gateway \
 && useradd --system --no-log-init --uid 10001 --gid gateway \
      --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=gpu-build /opt/gateway /opt/gateway
WORKDIR /srv/gateway
COPY config/ config/
COPY models/ models/
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_CONFIG=/srv/gateway/config/gateway.yaml \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_HEALTH_URL=http://127.0.0.1:8000/v2/health/ready
USER 10001:10001
EXPOSE 8000 8001
VOLUME ["/tmp"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['GATEWAY_HEALTH_URL'], timeout=2)"]
ENTRYPOINT ["gateway", "serve"]

# ---------------------------------------------------------------------------
# cpu: the default target (the last stage).
FROM ${BASE_IMAGE} AS cpu
SHELL ["/bin/sh", "-eu", "-c"]
# A fixed uid/gid, so that volumes and securityContext (runAsUser: 10001) can name it.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --no-log-init --uid 10001 --gid gateway \
      --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /opt/gateway /opt/gateway
WORKDIR /srv/gateway
# The default config (config/gateway.yaml) and the models it serves, read-only:
# mount another config and set GATEWAY_CONFIG (or pass --config) to serve others.
COPY config/ config/
COPY models/ models/
# GATEWAY_HOST: the default config binds every interface in the container (it
# binds loopback elsewhere). PYTHONDONTWRITEBYTECODE: the root filesystem may be
# read-only, and the virtualenv's bytecode was compiled at install.
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_CONFIG=/srv/gateway/config/gateway.yaml \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_HEALTH_URL=http://127.0.0.1:8000/v2/health/ready
USER 10001:10001
# HTTP (KServe v2, OpenAI API, /metrics, health) and gRPC (KServe v2).
EXPOSE 8000 8001
# The only path the gateway writes: temporary files (the metrics of `--workers N`).
# An audit file sink needs a writable directory too: mount one and point audit.path at it.
VOLUME ["/tmp"]
# Ready, not just alive: 503 until the models are loaded and once shutdown starts.
# Python's urllib, since the image has no curl; GATEWAY_HEALTH_URL follows a changed port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['GATEWAY_HEALTH_URL'], timeout=2)"]
ENTRYPOINT ["gateway", "serve"]

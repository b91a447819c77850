"""Build the gateway's image with podman on this project's machines: `make image`.

The Dockerfile is the portable part (any builder, any registry); everything
this kind of machine needs on top lives here, never in the Dockerfile:

* podman, runc and mmdebstrap from Debian's packages when missing (and
  netavark, aardvark-dns and iptables, for container networks and published
  ports);
* a containers.conf of our own (``build/image/containers.conf``, named by
  ``CONTAINERS_CONF`` for every podman call made from here): the runc runtime
  (crun fails on these machines' hybrid cgroups), cgroupfs, and ulimits within
  the machine's hard limits;
* no container registry is reachable, so the base image is made locally:
  Debian bookworm (minbase + python3, python3-venv, ca-certificates) with
  mmdebstrap from the host's apt sources, imported as ``localhost/python:3.11-slim``
  and passed as ``BASE_IMAGE`` (skipped when that image already exists);
* pip inside the build must trust the host's CA bundle: the directory
  ``build/image/pip`` (a pip.conf naming a copy of the bundle) is mounted at
  /etc/xdg/pip in every RUN of the build, and never lands in the image;
* RUN steps use the host's network (no bridge, no NAT needed for pip).

The same local base makes the Redis image that the replica tests use
(``localhost/gateway-redis``: Debian's redis-server).

    python deploy/build_image.py [--target cpu|gpu] [--tag NAME] [--no-cache]
    python deploy/build_image.py --redis        # the Redis image as well

Prints the image's name, size and build time. Tests import `ensure_image`,
`podman` and `podman_env`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "image"
CONTAINERS_CONF = BUILD_DIR / "containers.conf"
PIP_DIR = BUILD_DIR / "pip"

IMAGE = os.environ.get("GATEWAY_IMAGE", "localhost/inference-gateway:latest")
BASE_IMAGE = "localhost/python:3.11-slim"
REDIS_IMAGE = "localhost/gateway-redis:latest"
DEBIAN_SUITE = "bookworm"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
MERGED_USR_HOOK = Path("/usr/share/mmdebstrap/hooks/merged-usr")

# Debian package -> a file it installs (present: nothing to do).
TOOLS = {
    "podman": "/usr/bin/podman",
    "runc": "/usr/sbin/runc",
    "mmdebstrap": "/usr/bin/mmdebstrap",
    "netavark": "/usr/lib/podman/netavark",
    "aardvark-dns": "/usr/lib/podman/aardvark-dns",
    "iptables": "/usr/sbin/iptables",
    "uidmap": "/usr/bin/newuidmap",
}

# Within this machine's hard limits (`ulimit -Hn` is 20000 here); podman's
# defaults ask for more and the container fails to start.
CONTAINERS_CONF_TEXT = """\
# Written by deploy/build_image.py for podman on this machine (CONTAINERS_CONF).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Kept out of the locally made bases: documentation, manuals and translations.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)


def log(message: str) -> None:
    print(f"[build-image] {message}", file=sys.stderr, flush=True)


def install_tools() -> None:
    """apt-get install whichever of TOOLS is missing (as root; the Makefile's apt_install)."""
    missing = [package for package, path in TOOLS.items() if not os.path.exists(path)]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"missing {', '.join(missing)}: install them (Debian packages)")
    log(f"installing {' '.join(missing)} (Debian packages)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def podman_env() -> dict[str, str]:
    """The environment for podman calls: our containers.conf (written if missing)."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    if not CONTAINERS_CONF.exists() or CONTAINERS_CONF.read_text() != CONTAINERS_CONF_TEXT:
        CONTAINERS_CONF.write_text(CONTAINERS_CONF_TEXT)
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(
    *args: str, check: bool = True, capture: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS` with our containers.conf; output captured as text by default."""
    return subprocess.run(
        ["podman", *args],
        env=podman_env(),
        check=check,
        text=True,
        capture_output=capture,
        timeout=timeout,
    )


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def image_size(name: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


def _mmdebstrap_import(name: str, packages: Sequence[str], changes: Sequence[str]) -> None:
    """A Debian minbase root filesystem with `packages`, imported as image `name`."""
    sources = [str(HOST_APT_SOURCES)] if HOST_APT_SOURCES.exists() else []
    with tempfile.TemporaryDirectory(prefix="gateway-base-", dir=BUILD_DIR) as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        log(f"making {name} with mmdebstrap ({DEBIAN_SUITE} minbase + {', '.join(packages)})")
        subprocess.run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--quiet",
                f"--include={','.join(packages)}",
                *(f"--dpkgopt={option}" for option in DPKG_EXCLUDES),
                "--aptopt=Acquire::Languages none",
                # Merged /usr made by a hook rather than by the usrmerge package,
                # which would bring a whole Perl (some 50 MB) into the base.
                *(["--hook-dir=" + str(MERGED_USR_HOOK)] if MERGED_USR_HOOK.is_dir() else []),
                # No apt lists in the image: the Dockerfile's stages install nothing with apt.
                "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
                DEBIAN_SUITE,
                str(tarball),
                *sources,
            ],
            check=True,
        )
        change_args = [arg for change in changes for arg in ("--change", change)]
        podman("import", *change_args, str(tarball), name)


def ensure_base_image(force: bool = False) -> None:
    """`localhost/python:3.11-slim`: made once per machine (python3 is /usr/bin/python3)."""
    if image_exists(BASE_IMAGE) and not force:
        return
    _mmdebstrap_import(
        BASE_IMAGE,
        BASE_PACKAGES,
        [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            'CMD ["python3"]',
        ],
    )


def ensure_redis_image(force: bool = False) -> None:
    """`localhost/gateway-redis`: Debian's redis-server, no persistence, any address."""
    if image_exists(REDIS_IMAGE) and not force:
        return
    _mmdebstrap_import(
        REDIS_IMAGE,
        ("redis-server",),
        [
            "USER redis",
            "EXPOSE 6379",
            'CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", '
            '"--save", "", "--appendonly", "no", "--dir", "/tmp"]',
        ],
    )


def _pip_config() -> Path:
    """build/image/pip: pip.conf and the host's CA bundle, mounted at /etc/xdg/pip in RUNs."""
    PIP_DIR.mkdir(parents=True, exist_ok=True)
    if HOST_CA_BUNDLE.exists():
        bundle = PIP_DIR / "host-ca.crt"
        if not bundle.exists() or bundle.read_bytes() != HOST_CA_BUNDLE.read_bytes():
            shutil.copyfile(HOST_CA_BUNDLE, bundle)
        text = "[global]\ncert = /etc/xdg/pip/host-ca.crt\n"
    else:
        text = "[global]\n"
    conf = PIP_DIR / "pip.conf"
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)
    return PIP_DIR


def build(target: str = "cpu", tag: str = IMAGE, no_cache: bool = False) -> float:
    """Build the Dockerfile's `target` as `tag`; returns the seconds it took."""
    args = [
        "build",
        "--file",
        str(ROOT / "Dockerfile"),
        "--target",
        target,
        "--tag",
        tag,
        "--layers",
        # Docker's image format: OCI's has no HEALTHCHECK (nor SHELL).
        "--format",
        "docker",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "--volume",
        f"{_pip_config()}:/etc/xdg/pip:ro",
    ]
    if no_cache:
        args.append("--no-cache")
    started = time.monotonic()
    log(f"podman build --target {target} -t {tag}")
    podman(*args, str(ROOT), capture=False)
    return time.monotonic() - started


def ensure_image(target: str = "cpu", tag: str = IMAGE, redis: bool = False) -> float:
    """Tools, base image and build (layer-cached: seconds when nothing changed)."""
    install_tools()
    podman_env()
    ensure_base_image()
    if redis:
        ensure_redis_image()
    return build(target, tag)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--tag", default=None, help=f"default: {IMAGE} (cpu), ...:gpu (gpu)")
    parser.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    parser.add_argument("--rebuild-base", action="store_true", help="make the base image again")
    parser.add_argument("--redis", action="store_true", help=f"also make {REDIS_IMAGE}")
    args = parser.parse_args(argv)
    tag = args.tag or (IMAGE if args.target == "cpu" else IMAGE.rsplit(":", 1)[0] + ":gpu")
    install_tools()
    ensure_base_image(force=args.rebuild_base)
    if args.redis:
        ensure_redis_image(force=args.rebuild_base)
    seconds = build(args.target, tag, no_cache=args.no_cache)
    size = image_size(tag)
    print(f"{tag}: {size / 1e6:.1f} MB, built in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

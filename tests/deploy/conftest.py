"""The gateway's image, built once per session with `deploy/build_image.py`.

The build is layer-cached: with nothing changed it takes seconds; a machine's
first build (the local Debian base, then every layer) takes a minute or two.
Tests that need a container skip, saying why, only when podman is missing
(`make test` installs it: the Makefile's `container-tools`).
"""

from __future__ import annotations

import shutil

import pytest

from tests.deploy.containers import build_image


def podman_or_skip() -> None:
    if shutil.which("podman") is None:
        pytest.skip(
            "podman is not installed (`make test` installs it with runc and mmdebstrap: "
            "the Makefile's container-tools target; or run `make image`)"
        )


@pytest.fixture(scope="session")
def gateway_image() -> str:
    """The CPU image (and the Redis image beside it), built or brought up to date."""
    podman_or_skip()
    seconds = build_image.ensure_image(redis=True)
    size = build_image.image_size(build_image.IMAGE)
    print(f"\n{build_image.IMAGE}: {size / 1e6:.1f} MB, build {seconds:.1f} s (layer cache)")
    return build_image.IMAGE

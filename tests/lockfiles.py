"""Reading the lock files in requirements/ (pip requirement files with hashes,
compiled by `make lock`): which version of each package they pin for a Python."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def locked_requirements(path: Path) -> list[Requirement]:
    """Every `name==version ; marker` line, hashes and comments left out."""
    found = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "--")):
            continue
        found.append(Requirement(line.rstrip("\\").strip()))
    return found


def locked_versions(path: Path, python: tuple[int, int] | None = None) -> dict[str, str]:
    """Package -> pinned version for this platform and `python` (default: this one)."""
    major, minor = python or sys.version_info[:2]
    environment = {
        "python_version": f"{major}.{minor}",
        "python_full_version": f"{major}.{minor}.{sys.version_info[2] if python is None else 0}",
        "sys_platform": sys.platform,
        "platform_system": platform.system(),
        "platform_machine": platform.machine(),
    }
    versions: dict[str, str] = {}
    for requirement in locked_requirements(path):
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        (pin,) = requirement.specifier
        assert pin.operator == "==", f"{path.name}: {requirement} is not an exact pin"
        versions[canonicalize_name(requirement.name)] = pin.version
    return versions

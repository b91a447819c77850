"""Dependencies are declared where they are imported, and the locks agree with
pyproject.toml.

Every third-party module the package imports must be a runtime dependency (the
dev extras, installed for the tests, would otherwise hide a missing one until a
user's `make run`); tests, their helpers (testkit/) and load tests may use
the dev extras too, model builds the train extra. The locks in requirements/
must satisfy every range in pyproject.toml (an edited range without
`make lock` fails here), and the runtime lock must pin what the dev lock pins,
so the suite tests the versions `make run` serves with.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.lockfiles import locked_requirements, locked_versions

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCKS = ROOT / "requirements"
FIRST_PARTY = {"gateway", "tests", "testkit", "loadtests", "models"}


def _declared(*extras: str) -> set[str]:
    project = PYPROJECT["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(r).name) for r in requirements}


@cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _imported_modules(tree: Path) -> dict[str, set[str]]:
    """Top-level third-party module -> the files that import it (function-level imports too)."""
    found: dict[str, set[str]] = {}
    for path in sorted(tree.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


# Package modules that import an optional extra's module, only when a config asks
# for what they serve (a lazy import with an error naming the extra).
OPTIONAL_IMPORTS: dict[str, str] = {
    "gateway/backends/torch_backend.py": "torch",
    "gateway/backends/triton.py": "triton-http",
}


# Files run by another venv than the project's, with the requirements it is made from.
OTHER_VENVS: dict[str, str] = {
    "testkit/triton_server.py": "requirements/triton-server.in",  # .venv-triton
}


def _undeclared(tree: str, declared: set[str]) -> list[str]:
    problems = []
    for module, files in sorted(_imported_modules(ROOT / tree).items()):
        files = files - OTHER_VENVS.keys()
        if not files:
            continue
        allowed = declared
        if all(f in OPTIONAL_IMPORTS for f in files):
            allowed = declared | _declared(*{OPTIONAL_IMPORTS[f] for f in files})
        # A module of an installed distribution maps to it; one not installed
        # here (the train extra's torch) is taken to share its name.
        providers = {canonicalize_name(d) for d in _distributions().get(module, [module])}
        if not providers & allowed:
            problems.append(f"{module} (from {sorted(providers)}), imported by {sorted(files)}")
    return problems


@pytest.mark.parametrize(
    ("tree", "extras"),
    [
        ("gateway", ()),
        ("tests", ("dev",)),
        ("testkit", ("dev",)),
        ("loadtests", ("dev",)),
        ("models", ("train", "dev")),
    ],
)
def test_every_import_is_declared(tree: str, extras: tuple[str, ...]) -> None:
    where = "project.dependencies" + "".join(f" or the {e} extra" for e in extras)
    undeclared = _undeclared(tree, _declared(*extras))
    assert not undeclared, f"imported under {tree}/ but not declared in {where}:\n" + "\n".join(
        undeclared
    )


@pytest.mark.parametrize("path", sorted(OTHER_VENVS))
def test_a_file_run_by_another_venv_imports_what_that_venv_installs(path: str) -> None:
    lines = (ROOT / OTHER_VENVS[path]).read_text().splitlines()
    installed = {
        canonicalize_name(Requirement(line).name)
        for line in (raw.split("#")[0].strip() for raw in lines)
        if line
    }
    # module -> distribution where they differ (the lock's venv is not this one)
    distribution = {"pytriton": "nvidia-pytriton"}
    imported = set()
    for module, files in _imported_modules(ROOT / "testkit").items():
        if path in files:
            imported.add(canonicalize_name(distribution.get(module, module)))
    # numpy comes with both; the rest must be named in the venv's requirements
    assert imported - installed - {"numpy"} == set(), OTHER_VENVS[path]


def test_the_check_sees_a_package_that_only_an_extra_brings() -> None:
    # openai is installed here (dev extra) but is no runtime dependency.
    assert "openai" in _distributions()
    assert "openai" not in _declared()
    assert canonicalize_name(_distributions()["openai"][0]) in _declared("dev")


def _unsatisfied(lock: str, requirements: list[str]) -> list[str]:
    pinned = locked_versions(LOCKS / lock)
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name}: not in {lock}")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}: {lock} pins {version}, pyproject asks {text!r}")
    return problems


def test_the_locks_satisfy_pyproject() -> None:
    project = PYPROJECT["project"]
    runtime, dev = project["dependencies"], project["optional-dependencies"]["dev"]
    problems = _unsatisfied("runtime.txt", runtime) + _unsatisfied("dev.txt", runtime + dev)
    problems += _unsatisfied("build.txt", PYPROJECT["build-system"]["requires"])
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


def test_the_runtime_lock_pins_what_the_dev_lock_pins() -> None:
    dev = {canonicalize_name(r.name): r for r in locked_requirements(LOCKS / "dev.txt")}
    for requirement in locked_requirements(LOCKS / "runtime.txt"):
        name = canonicalize_name(requirement.name)
        assert name in dev, f"{name} is in the runtime lock only"
        pins = {str(s) for s in requirement.specifier}
        same = [
            r for r in locked_requirements(LOCKS / "dev.txt") if canonicalize_name(r.name) == name
        ]
        assert pins in [{str(s) for s in r.specifier} for r in same], (
            f"{name}: runtime pins {pins}, dev pins {[str(r.specifier) for r in same]}"
        )

"""The folder layout is the architecture: imports run only downwards, packages meet through their
public ``__init__``, and each file does one job."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dynasor_client"

# Lower ranks are imported by higher ones, never the reverse; packages of one rank are independent.
# Root-level private modules (_exceptions, _log, _probe, ...) are the shared internals of every rank.
RANKS = {
    "endpoints": 1,
    "certainty": 2,
    "traces": 3,
    "program": 3,
    "algorithms": 4,
    "budget": 4,
    "runtime": 5,
    "local": 6,
    "replay": 6,
    "distributed": 6,
    "calibration": 7,
    "proxy": 8,
    "benchmarks": 8,
    "demo": 8,
    "cli": 9,
}
ROOT_RANK = {"__init__": 9, "__main__": 10}  # the rest of the root: rank 0

LONG_FILE_LINES = 500
LONG_FILE_REASON = "Long because"  # what a file over the limit says at its top (docstring or comment)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _owner(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _rank(owner: str) -> int:
    return RANKS.get(owner, ROOT_RANK.get(owner, 0))


def _imports(path: Path) -> list[tuple[int, list[str]]]:
    """(line, absolute module path) of every ``dynasor_client`` import in ``path``, at any depth."""
    package = ["dynasor_client", *path.relative_to(PACKAGE).parts[:-1]]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "dynasor_client":
                target = node.module.split(".")
            else:
                continue
            found.append((node.lineno, target))
            found += [(node.lineno, [*target, a.name]) for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name.split(".")) for a in node.names if a.name.startswith("dynasor_client.")
            ]
    return found


def test_every_package_has_a_rank() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= RANKS.keys(), f"give {sorted(packages - RANKS.keys())} a rank in RANKS"


def test_imports_run_only_downwards() -> None:
    wrong = []
    for path in _modules():
        owner = _owner(path)
        for line, target in _imports(path):
            if len(target) < 2 or target[1] == owner:
                continue
            other = target[1]
            if other in RANKS and _rank(other) >= _rank(owner):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({owner}) imports {'.'.join(target)}")
    assert not wrong, "\n".join(wrong)


def test_packages_meet_through_their_public_surface() -> None:
    wrong = []
    for path in _modules():
        owner = _owner(path)
        for line, target in _imports(path):
            if len(target) < 3 or target[1] == owner or target[1] not in RANKS:
                continue
            if any(part.startswith("_") for part in target[2:]):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports private {'.'.join(target)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_file_does_one_job(path: Path) -> None:
    text = path.read_text()
    lines = text.count("\n")
    if lines > LONG_FILE_LINES:
        head = "\n".join(text.splitlines()[:40])
        assert LONG_FILE_REASON in head, (
            f"{lines} lines: split it by job, or say at its top why it is one ('{LONG_FILE_REASON} ...')"
        )

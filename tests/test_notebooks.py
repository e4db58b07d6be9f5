"""The notebooks run top to bottom in quick mode, and are kept in git without outputs.

Each notebook is executed with nbclient in a kernel of this interpreter (``sys.executable``: the
project's virtual environment, whatever kernels the machine has installed), with
``DYNASOR_NOTEBOOK_QUICK=1`` and ``DYNASOR_TRACES`` pointing at the shared recorded traces; the run
is skipped when those are absent. ``pytest -m "not notebooks"`` leaves these runs out.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.replay import TRACES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXPECTED = ("quickstart.ipynb", "calibration.ipynb", "online_serving.ipynb")
KERNEL = "dynasor-client-tests"


def _text(nb: Any) -> str:
    """Everything the executed notebook printed (streams and plain-text results)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "text/plain" in out.get("data", {}):
                parts.append(out.data["text/plain"])
    return "\n".join(parts)


def _images(nb: Any) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def _percent(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"the notebook printed no line matching {pattern!r}; it printed:\n{text}"
    return float(match.group(1))


def _check_quickstart(nb: Any, text: str) -> None:
    assert _percent(r"saving: (-?[\d.]+)% of the generated tokens", text) > 0
    assert re.search(r"certaindex\s+accuracy [\d.]+%", text)
    assert re.search(r"stopped after \d+ samples", text)
    assert _images(nb) >= 2  # token-to-accuracy, certaindex over time


def _check_calibration(nb: Any, text: str) -> None:
    assert re.search(r"^rule: \{", text, re.MULTILINE)  # the chosen rule, as JSON
    assert "identical to the shipped default_rule()" in text
    assert _percent(r"held-out: the calibrated rule saved (-?[\d.]+)% of the tokens", text) > 0
    assert _images(nb) >= 1


def _check_online(nb: Any, text: str) -> None:
    for policy in ("naive", "ours"):
        assert re.search(rf"{policy}\b.*attainment", text, re.IGNORECASE), text
    assert _images(nb) >= 1


CHECKS: dict[str, Callable[[Any, str], None]] = {
    "quickstart.ipynb": _check_quickstart,
    "calibration.ipynb": _check_calibration,
    "online_serving.ipynb": _check_online,
}


def _notebooks_in_git() -> list[Path]:
    """The notebooks git tracks (or, outside a git checkout, those in the folder) and new ones."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "notebooks/*.ipynb"],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=30,
        ).stdout.split()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        listed = []
    paths = [ROOT / p for p in listed if (ROOT / p).exists()]
    return sorted(paths) or sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_notebooks_are_there() -> None:
    present = {p.name for p in _notebooks_in_git()}
    assert set(EXPECTED) <= present, f"missing notebooks: {sorted(set(EXPECTED) - present)}"


@pytest.mark.parametrize("path", _notebooks_in_git(), ids=lambda p: p.name)
def test_notebook_is_kept_without_outputs(path: Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))  # plain JSON: this check needs no extra
    assert nb.get("nbformat") == 4, f"{path.name}: not an nbformat 4 notebook"
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} hold outputs or execution counts; clear them before committing "
        f"(jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)})"
    )
    assert nb.get("metadata", {}).get("kernelspec", {}).get("name") == "python3"


@pytest.fixture(scope="module")
def kernel_manager_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Any]:
    """Kernel managers for an ipykernel of this interpreter (not whatever ``python3`` kernel is installed)."""
    for module in ("nbformat", "nbclient", "ipykernel"):
        pytest.importorskip(module, reason="the [notebooks] extra is not installed")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    kernels = tmp_path_factory.mktemp("kernels")
    spec = kernels / KERNEL
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "dynasor-client tests", "language": "python"}),
        encoding="utf-8",
    )

    def make() -> Any:
        specs = KernelSpecManager(kernel_dirs=[str(kernels)])
        return AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)

    return make


@pytest.mark.notebooks
@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_in_quick_mode(name: str, kernel_manager_factory: Callable[[], Any]) -> None:
    import nbformat
    from nbclient import NotebookClient

    if not (TRACES / "svamp-codex-sc30.jsonl").exists():
        pytest.skip(f"recorded traces not found: {TRACES} (the shared data folder is absent)")
    path = NOTEBOOKS / name
    if not path.exists():
        pytest.fail(f"{path} is missing")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    env = {**os.environ, "DYNASOR_NOTEBOOK_QUICK": "1", "DYNASOR_TRACES": str(TRACES)}
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, so figures become outputs
    client = NotebookClient(
        nb,
        km=kernel_manager_factory(),
        timeout=600,
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # run from the notebooks folder, as people do
    )
    # Raises CellExecutionError (with the cell and its traceback) on any error; shuts the kernel down.
    client.execute(env=env, cleanup_kc=True)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    CHECKS[name](nb, _text(nb))

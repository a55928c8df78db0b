"""Executes every notebook in notebooks/ on the CPU, as a reader would run it,
and fails on the first cell that raises (the notebooks assert their own
results) or when a notebook takes longer than its budget.

Notebooks run in memory and nothing is written back: the committed files stay
without outputs. What a notebook needs that a build may lack is declared in
the notebook, not here:
  - notebook metadata {"teachcompute_ext": {"requires": ["op", ...]}}: the whole
    notebook is skipped when one of these ops is not registered;
  - a cell tag "requires:op": that cell is left out when the op is missing, the
    rest runs, and the test then reports a skip naming what was not run.
"""

import os
import time
from pathlib import Path

import pytest
import torch

import teachcompute_ext  # noqa: F401  (registers the ops the requirements name)

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")  # the kernel nbclient starts

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 120
NOTEBOOK_BUDGET_S = 120  # the limit per notebook, kernel start included
REQUIRES_TAG = "requires:"


def _missing(ops):
    return sorted({op for op in ops if not hasattr(torch.ops.teachcompute_ext, op)})


def _cell_needs(cell):
    return [t[len(REQUIRES_TAG) :] for t in cell.metadata.get("tags", []) if t.startswith(REQUIRES_TAG)]


def _execute(nb, monkeypatch):
    """Runs `nb` in a fresh kernel with notebooks/ as its working directory; returns seconds."""
    # The kernel is a subprocess: it imports the package of this checkout (not
    # another install) because the repository root leads its PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def test_notebooks_exist():
    # An empty glob would make the parametrized test below vanish without a failure.
    assert NOTEBOOKS, f"no notebook found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    missing = _missing(nb.metadata.get("teachcompute_ext", {}).get("requires", []))
    if missing:
        pytest.skip(f"{path.name} needs {', '.join(missing)}, which this build does not register")

    left_out = [i for i, cell in enumerate(nb.cells) if _missing(_cell_needs(cell))]
    absent = _missing(op for i in left_out for op in _cell_needs(nb.cells[i]))
    nb.cells = [cell for i, cell in enumerate(nb.cells) if i not in left_out]

    seconds = _execute(nb, monkeypatch)
    print(f"{path.name}: {seconds:.1f} s")
    assert seconds < NOTEBOOK_BUDGET_S, f"{path.name} took {seconds:.0f} s (budget {NOTEBOOK_BUDGET_S} s)"
    if left_out:
        pytest.skip(
            f"{path.name}: the other cells ran and passed in {seconds:.0f} s; left out cells "
            f"{left_out}, which need {', '.join(absent)} (not in this build)"
        )


def test_a_failing_cell_fails_the_run(monkeypatch):
    # The notebooks check themselves with asserts: that is only worth something if
    # a raising cell makes the run fail.
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("assert 1 + 1 == 3, 'arithmetic'")])
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="arithmetic"):
        _execute(nb, monkeypatch)

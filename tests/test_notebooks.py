"""The notebooks run top to bottom in their CPU-friendly setting (ROAD_INTERP_NOTEBOOK_QUICK=1),
are stored without outputs, import only from road_interp and the standard library, and show
their figures."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def code_of(cell) -> str:
    """A cell's Python source without IPython magics."""
    return "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {"quickstart", "composition", "rotation_statistics", "serving"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"
            for node in ast.walk(ast.parse(code_of(cell))):
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    modules = [node.module or ""]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    assert top == "road_interp" or top in sys.stdlib_module_names, (
                        f"{path.name} imports {module}; notebooks import only from road_interp"
                    )


@pytest.mark.notebook
@pytest.mark.real
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("ROAD_INTERP_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    images = sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    assert images >= 1, f"{path.name} showed no figure"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_says_what_quick_mode_shows_and_has_rendered_figures(path):
    """A reader learns what the quick numbers can and cannot show, sees the figures without
    running the notebook (PNGs rendered in quick mode, committed beside it), and full runs
    write under the repository's results/ from any working directory."""
    nb = nbformat.read(path, as_version=4)
    notes = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "**Quick mode.**" in notes and "ROAD_INTERP_NOTEBOOK_QUICK=1" in notes
    rendered = sorted((path.parent / "figures").glob(f"{path.stem}-*.png"))
    assert rendered, f"no rendered figures notebooks/figures/{path.stem}-*.png"
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in rendered)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "../results" not in code  # relative to the working directory: not that

"""The Monte-Carlo notebook runs headless without a cell error."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB = Path(__file__).resolve().parents[1] / "notebooks" / "monte_carlo_studies.ipynb"


def test_notebook_executes():
    nb = nbformat.read(NB, as_version=4)
    try:
        import ipykernel  # noqa: F401
    except ImportError:  # pragma: no cover
        pytest.skip("ipykernel is not installed")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "max |z|" in text

"""The Monte-Carlo notebook runs headless, and every Monte-Carlo estimate it prints agrees with its exact value."""
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB = Path(__file__).resolve().parents[1] / "notebooks" / "monte_carlo_studies.ipynb"
Z_LINE = re.compile(r"^(conditioning|best-of-n), (.+): max \|z\| over seeds and (t|n) = (\S+)$", re.M)


def test_notebook_has_no_code_in_markdown():
    """Code in a markdown cell never runs (the best-of-n study once sat in one)."""
    nb = nbformat.read(NB, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            assert not re.search(r"^\s*(import |from \S+ import |\w+ = |for |with |print\()", cell.source, re.M), cell.source


def test_notebook_executes_and_z_scores_are_bounded():
    nb = nbformat.read(NB, as_version=4)
    try:
        import ipykernel  # noqa: F401
    except ImportError:  # pragma: no cover
        pytest.skip("ipykernel is not installed")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    found = Z_LINE.findall(text)
    # Two studies (conditioning, best-of-n), two error families each.
    assert sorted((study, family) for study, family, _, _ in found) == sorted(
        (s, f) for s in ("conditioning", "best-of-n") for f in ("normal (light)", "pareto:alpha=2.5 (heavy)")
    ), text
    for study, family, _, value in found:
        z = float(value)  # "nan" parses and fails below
        # Each line is the largest of 24 |z| (4 seeds x 6 points), z = (MC - exact) / se with a fixed key:
        # below 4 (a 4-sigma bound, STYLE.md), and above 0.3 (P(max of 24 |N(0,1)| < 0.3) = 0.24^24 ~ 1e-15),
        # so neither a biased estimate nor an inflated standard error passes.
        assert 0.3 < z < 4.0, (study, family, z)

"""Execute notebooks/*.ipynb into .cache/docs/notebooks/ for the site (`make docs` runs this first).

A notebook is executed again only when its cells' sources changed (the copy records their hash, which
docs/hooks.py compares before it renders the executed copy); the committed notebooks stay without outputs.

    python docs/execute_notebooks.py            # the stale ones
    python docs/execute_notebooks.py --force    # all of them
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hooks import EXECUTED, notebooks, source_hash  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="execute_notebooks.py", description=__doc__.split("\n")[0])
    ap.add_argument("--force", action="store_true", help="execute every notebook, stale or not")
    ap.add_argument("--timeout", type=int, default=900, help="seconds a cell may run (default: 900)")
    args = ap.parse_args(argv)
    EXECUTED.mkdir(parents=True, exist_ok=True)
    for nb_path in notebooks():
        out, sha = EXECUTED / nb_path.name, source_hash(nb_path)
        if not args.force and out.exists():
            meta = json.loads(out.read_text()).get("metadata", {}).get("goodhart_jax", {})
            if meta.get("source_sha256") == sha:
                print(f"{nb_path.name}: up to date", file=sys.stderr)
                continue
        nb = nbformat.read(nb_path, as_version=4)
        t0 = time.monotonic()
        print(f"{nb_path.name}: executing ...", file=sys.stderr, flush=True)
        NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(nb_path.parent)}}).execute()
        for cell in nb.cells:  # the executing machine's tqdm warning (IProgress, its site-packages path): noise
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs
                                if not (o.get("name") == "stderr" and "TqdmWarning: IProgress" in o.get("text", ""))]
        nb.metadata["goodhart_jax"] = {"source_sha256": sha}
        tmp = out.with_suffix(".tmp")
        nbformat.write(nb, tmp)
        tmp.replace(out)
        print(f"{nb_path.name}: executed in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

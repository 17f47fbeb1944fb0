"""Re-execute notebooks in place so their saved outputs (figures, printed figures of merit) are current.

The docs are rendered from these saved outputs. Usage: .venv/bin/python tools/refresh_outputs.py [nbs/NAME.ipynb ...]
(default: every numbered notebook). Runs each with its default parameters, then nbdev-clean.
"""
import subprocess, sys, time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

root = Path(__file__).resolve().parent.parent
paths = [Path(p) for p in sys.argv[1:]] or sorted((root / "nbs").glob("[0-9]*.ipynb"))
for path in paths:
    t0 = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=1800, resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    print(f"{path.name}: {time.perf_counter() - t0:.1f} s")
subprocess.run([str(Path(sys.executable).parent / "nbdev-clean")], cwd=root, check=True)

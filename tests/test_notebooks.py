"""Notebooks as tests: papermill runs the parameterised notebooks, nbdev-test runs the rest.

Each notebook runs exactly once per test run. A notebook with a cell tagged `parameters` takes
`device` and `size` and is executed here with papermill; it carries `skip_exec: true` in its front
matter so `nbdev-test` leaves it alone. Notebooks without parameters are plain, fast library
notebooks that `nbdev-test` runs in-process. Set DTI_LENS_PAPERMILL=all to run every notebook here
(e.g. a full-size run on a GPU machine), and DTI_LENS_SIZE to override the size.
"""
import json, os
from pathlib import Path

import pytest
import torch
import yaml

NBS = Path(__file__).resolve().parent.parent / "nbs"
NOTEBOOKS = sorted(NBS.glob("[0-9]*.ipynb"))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZE = os.environ.get("DTI_LENS_SIZE", "full" if DEVICE == "cuda" else "small")
RUN_ALL = os.environ.get("DTI_LENS_PAPERMILL") == "all"


def load(path): return json.loads(path.read_text())
def has_parameters(nb): return any("parameters" in c["metadata"].get("tags", []) for c in nb["cells"])


def skips_nbdev_test(nb):
    "Whether the notebook's YAML front matter (a leading raw cell) sets skip_exec."
    first = nb["cells"][0]
    if first["cell_type"] != "raw": return False
    text = "".join(first["source"]).strip().strip("-")
    return bool((yaml.safe_load(text) or {}).get("skip_exec", False))


def test_every_notebook_has_exactly_one_runner():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = load(path)
        assert has_parameters(nb) == skips_nbdev_test(nb), (
            f"{path.name}: a notebook with a `parameters` cell must set `skip_exec: true` (papermill runs it), "
            "and one without must not (nbdev-test runs it)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook(path, tmp_path):
    import papermill as pm
    nb = load(path)
    if not (has_parameters(nb) or RUN_ALL): pytest.skip("no parameters cell: nbdev-test runs this notebook")
    params = dict(device=DEVICE, size=SIZE) if has_parameters(nb) else {}
    pm.execute_notebook(str(path), str(tmp_path / path.name), parameters=params, kernel_name="python3",
                        cwd=str(tmp_path), progress_bar=False)

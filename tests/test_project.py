"""Project wiring that a notebook cannot check about itself."""
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_nbdev_clean_keeps_papermill_parameters_tag_and_drops_other_metadata(tmp_path):
    nb = {"cells": [{"cell_type": "code", "execution_count": 3, "id": "x1", "outputs": [], "source": "size = 'small'",
                     "metadata": {"tags": ["parameters"], "scrolled": True, "ExecuteTime": {"start": "now"}}}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "probe.ipynb"
    path.write_text(json.dumps(nb))
    res = subprocess.run([str(BIN / "nbdev-clean"), "--fname", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "Failed" not in res.stderr, res.stderr
    cell = json.loads(path.read_text())["cells"][0]
    assert cell["metadata"] == {"tags": ["parameters"]}
    assert cell["execution_count"] is None


def test_top_level_api_and_version():
    import dti_lens
    from dti_lens import train_dti, slerp  # the README's entry points
    for name in ["normalize", "angle", "project_tangent", "retract", "exp_map", "log_map", "slerp", "nearest",
                 "VonMisesFisher", "fit_vmf", "fit_vmf_mixture", "DirectionalSGD", "train_dti", "train_many", "rescale",
                 "load_embeddings", "save_embeddings", "read_embeddings", "tiny_pipeline", "m_star", "text_encoders", "load_images"]:
        assert callable(getattr(dti_lens, name)), name
    meta = subprocess.run([sys.executable, "-m", "pip", "show", "dti_lens"], capture_output=True, text=True).stdout
    assert f"Version: {dti_lens.__version__}" in meta


def test_readme_defaults_table_is_the_trainers():
    from dti_lens.train import defaults_table
    assert defaults_table() in (ROOT / "README.md").read_text(), "README's defaults table differs from train.defaults_table()"

"""The `dti-lens` command, run as a user runs it: a subprocess with files on disk."""
import re, subprocess, sys
from pathlib import Path


def run(*args, cwd):
    exe = Path(sys.executable).parent / "dti-lens"   # the console script that set-up installed
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True)


def test_demo_prints_true_and_fitted_kappas_and_writes_figure(tmp_path):
    res = run("demo", "--out", "figs", "--n", "2000", "--d", "48", "--k", "5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = re.findall(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)%$", res.stdout, flags=re.M)
    assert len(rows) == 5, res.stdout
    for _, true, fitted, _ in rows: assert abs(float(fitted) / float(true) - 1) < 0.15, res.stdout
    html = (tmp_path / "figs" / "vmf_mixture.html").read_text()
    assert "plotly" in html and "fitted kappa" in html


def test_demo_rejects_bad_sizes(tmp_path):
    res = run("demo", "--k", "0", cwd=tmp_path)
    assert res.returncode == 2 and "--k" in res.stderr
    assert not (tmp_path / "demo_output").exists()


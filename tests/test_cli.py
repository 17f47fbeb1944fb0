"""The `dti-lens` command, run as a user runs it: a subprocess with files on disk."""
import json, re, subprocess, sys
from pathlib import Path
import pytest
from safetensors.torch import load_file


def run(*args, cwd):
    exe = Path(sys.executable).parent / "dti-lens"   # the console script that set-up installed
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True)


def _subject(folder, n=4, seed=0):
    from dti_lens.data import synthetic_subject
    folder.mkdir(parents=True)
    for i, im in enumerate(synthetic_subject(n, 64, seed)): im.save(folder / f"{i}.png")
    return folder


def test_demo_trains_dti_and_ti_and_writes_a_report(tmp_path):
    res = run("demo", "--out", "out", "--steps", "15", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = {m: (float(ms), float(first), float(last), float(ratio)) for m, ms, first, last, ratio in
            re.findall(r"^(dti|ti)\s+text_encoder\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", res.stdout, flags=re.M)}
    assert set(rows) == {"dti", "ti"}, res.stdout
    assert rows["dti"][3] == 1.0 and rows["dti"][1] == rows["dti"][0]  # DTI's norm is m* from the first step to the last
    assert rows["ti"][2] > rows["ti"][1]                                # TI's norm grows
    html = (tmp_path / "out" / "report.html").read_text()
    assert "plotly" in html and html.count("<img") >= 6
    assert (tmp_path / "out" / "dti" / "learned_embeds.safetensors").exists()


def test_train_writes_every_format(tmp_path):
    _subject(tmp_path / "imgs")
    res = run("train", "--model", "tiny:sdxl", "--images", "imgs", "--token", "<disc>", "--init", "toy", "--steps", "3",
              "--batch-size", "2", "--output-dir", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    single = load_file(out / "disc.safetensors")
    assert single["clip_l"].shape == (1, 32) and single["clip_g"].shape == (1, 40)
    assert load_file(out / "learned_embeds.safetensors")["<disc>"].shape == (1, 32)
    assert len((out / "log.jsonl").read_text().splitlines()) == 3


def test_train_rejects_bad_settings_before_work(tmp_path):
    _subject(tmp_path / "imgs")
    for flags, msg in [(["--lr", "0"], "lr must be > 0"), (["--magnitude", "huge"], "magnitude must be"),
                       (["--kappa", "-1"], "kappa must be >= 0"), (["--resolution", "60"], "multiple of")]:
        res = run("train", "--model", "tiny:sd15", "--images", "imgs", "--token", "<disc>", "--init", "toy", "--output-dir", "out",
                  *flags, cwd=tmp_path)
        assert res.returncode == 2 and msg in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def test_train_many_splits_subjects_across_processes(tmp_path):
    subjects = {"red disc": "toy", "blue disc": "toy", "third": "dog"}
    spec = {name: {"path": name.replace(" ", "_"), "class": cls} for name, cls in subjects.items()}
    for i, name in enumerate(subjects): _subject(tmp_path / name.replace(" ", "_"), n=2, seed=i)
    (tmp_path / "dreambooth.json").write_text(json.dumps(spec))
    # two CPU processes joined by accelerate over gloo (accelerate's own CPU launcher needs MPI)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "dti_lens.cli", "train-many",
                          "dreambooth.json", "--model", "tiny:sd15", "--output-dir", "out", "--steps", "2", "--batch-size", "2"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    trained = re.findall(r"^trained (.+?):", res.stdout, flags=re.M)
    assert sorted(trained) == sorted(subjects), res.stdout  # each subject once, by one of the processes
    for name in subjects: assert (tmp_path / "out" / name / "learned_embeds.safetensors").exists()


def test_vmf_demo_prints_true_and_fitted_kappas_and_writes_figure(tmp_path):
    res = run("vmf-demo", "--out", "figs", "--n", "2000", "--d", "48", "--k", "5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = re.findall(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)%$", res.stdout, flags=re.M)
    assert len(rows) == 5, res.stdout
    for _, true, fitted, _ in rows: assert abs(float(fitted) / float(true) - 1) < 0.15, res.stdout
    html = (tmp_path / "figs" / "vmf_mixture.html").read_text()
    assert "plotly" in html and "fitted kappa" in html


def test_vmf_demo_rejects_bad_sizes(tmp_path):
    res = run("vmf-demo", "--k", "0", cwd=tmp_path)
    assert res.returncode == 2 and "--k" in res.stderr
    assert not (tmp_path / "demo_output").exists()


def test_adjust_fixes_a_file_in_its_own_format(tmp_path):
    import torch
    from dti_lens.embeddings import read_embeddings
    from dti_lens.zoo import tiny_pipeline
    from dti_lens.encoders import text_encoders
    from dti_lens.tea import tea_adjust, anchor_vector
    enc = text_encoders(tiny_pipeline("sd15"))["text_encoder"]
    big = 8 * torch.randn(2, 32)
    save_file = __import__("safetensors.torch", fromlist=["save_file"]).save_file
    save_file({"<cat>": big}, tmp_path / "cat.safetensors")
    res = run("adjust", "cat.safetensors", "fixed.safetensors", "--model", "tiny:sd15", "--anchor", "cat", "--alpha", "0.3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    fixed = read_embeddings(tmp_path / "fixed.safetensors")
    assert fixed.kind == "diffusers" and fixed.token == "<cat>"
    expected = tea_adjust(big.double(), anchor_vector(enc, "cat"), 0.3, 1.0).float()
    assert torch.allclose(fixed.vectors[None], expected, atol=1e-6)
    res = run("adjust", "cat.safetensors", "auto.safetensors", "--model", "tiny:sd15", "--anchor", "cat", "--auto", cwd=tmp_path)
    assert res.returncode == 0 and "alpha" in res.stdout, res.stderr
    res = run("adjust", "cat.safetensors", "bad.safetensors", "--model", "tiny:sd15", "--anchor", "cat", "--alpha", "2", cwd=tmp_path)
    assert res.returncode == 2 and "alpha" in res.stderr
    assert not (tmp_path / "bad.safetensors").exists()

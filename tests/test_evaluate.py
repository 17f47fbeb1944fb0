"""`dti_lens.evaluate` end to end on the zoo: scores against the scoring models' own outputs in float64, a killed
evaluation resumed, the `dti-lens evaluate` command and its one-line errors, the report in a real browser."""
import json, subprocess, sys

import numpy as np
import pytest
import torch

from dti_lens.data import dreambooth_dataset, synthetic_dreambooth
from dti_lens.evaluation import PromptSet, evaluate, image_metadata
from dti_lens.pipelines import Family
from dti_lens.report import browser_check, find_chromium
from dti_lens.train import train_dti
from dti_lens.zoo import save_tiny_scorer

PROMPTS = PromptSet("test", ("a {} in the jungle", "a red {}"), ("a {} in the snow", "a {} wearing a red hat"))
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    "A synthetic DreamBooth folder, TI and DTI runs of its two subjects on tiny SD 1.5, and tiny scorers on disk."
    tmp = tmp_path_factory.mktemp("evaluate")
    data = synthetic_dreambooth(tmp / "dreambooth")
    for method in ("ti", "dti"):
        for s in dreambooth_dataset(data):
            train_dti("tiny:sd15", s.path, f"<{s.name}>", s.init, method=method, steps=2, resolution=32,
                      output_dir=tmp / "runs" / method / s.name, progress=False)
    scorers = {k: save_tiny_scorer(k, tmp / k) for k in ("dinov2", "siglip")}
    kw = dict(prompts=PROMPTS, seeds=SEEDS, steps=2, resolution=32, image_model=scorers["dinov2"],
              text_model=scorers["siglip"], progress=False)
    return tmp, data, [tmp / "runs" / "ti", tmp / "runs" / "dti"], kw


@pytest.fixture(scope="module")
def done(setup):
    tmp, data, runs, kw = setup
    return evaluate(runs, "tiny:sd15", data, tmp / "eval", **kw)


def test_scores_equal_the_models_own_outputs_in_float64(setup, done):
    "DINOv2's CLS state and SigLIP's logits_per_image (its forward, not get_*_features), re-derived in float64."
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor
    tmp, data, _, kw = setup
    dino = AutoModel.from_pretrained(kw["image_model"]).double().eval()
    dino_proc = AutoImageProcessor.from_pretrained(kw["image_model"])
    siglip = AutoModel.from_pretrained(kw["text_model"]).double().eval()
    siglip_proc = AutoProcessor.from_pretrained(kw["text_model"])
    for rec in done.records[::3]:
        img = Image.open(tmp / "eval" / rec["file"]).convert("RGB")
        refs = [Image.open(p).convert("RGB") for p in sorted((data / rec["subject"]).glob("*.png"))]
        with torch.no_grad():
            cls = dino(pixel_values=dino_proc([img] + refs, return_tensors="pt").pixel_values.double()).last_hidden_state[:, 0]
            cos = torch.nn.functional.cosine_similarity(cls[:1], cls[1:])
            inp = siglip_proc(text=[rec["scoring_prompt"]], images=[img], padding="max_length", return_tensors="pt")
            logit = siglip(input_ids=inp.input_ids, pixel_values=inp.pixel_values.double()).logits_per_image[0, 0]
        assert abs(rec["image_fidelity"] - cos.mean().item()) < 1e-6
        assert abs(rec["text_fidelity"] - torch.sigmoid(logit).item()) < 1e-6


def test_files_and_summary(setup, done):
    tmp = setup[0]
    assert len(done.records) == 2 * 2 * 2 * len(SEEDS)
    lines = (tmp / "eval" / "scores.jsonl").read_text().splitlines()
    assert [json.loads(l) for l in lines] == done.records
    for rec in done.records:
        meta = image_metadata(tmp / "eval" / rec["file"])
        assert (meta["prompt"], meta["seed"], meta["run"], meta["subject"]) == (rec["prompt"], rec["seed"], rec["run"],
                                                                                 rec["subject"])
    for row in done.summary:  # the run's mean is the mean of its subjects' means
        subs = [s for s in done.subjects if s["run"] == row["run"]]
        assert row["subjects"] == 2 and abs(row["text_fidelity"] - np.mean([s["text_fidelity"] for s in subs])) < 1e-12
        assert row["text_fidelity_low"] < row["text_fidelity"] < row["text_fidelity_high"]
    assert (tmp / "eval" / "summary.csv").read_text().splitlines()[0].startswith("run,subjects,images,image_fidelity")


def test_a_killed_evaluation_resumes_without_regenerating(setup, monkeypatch, tmp_path):
    "Killed after 3 images, the second call generates only the other 13, and the result is the uninterrupted one's."
    import dti_lens.evaluation as E
    _, data, runs, kw = setup
    saved, real_save = [], E._save_png
    def dying_save(img, path, meta):
        if len(saved) == 3: raise KeyboardInterrupt
        real_save(img, path, meta); saved.append(path)
    monkeypatch.setattr(E, "_save_png", dying_save)
    with pytest.raises(KeyboardInterrupt): evaluate(runs, "tiny:sd15", data, tmp_path, **kw | dict(batch_size=1))
    monkeypatch.setattr(E, "_save_png", real_save)
    generated, real_generate = [], Family.generate
    def counting(self, prompts=None, **k):
        generated.extend(prompts)
        return real_generate(self, prompts, **k)
    monkeypatch.setattr(Family, "generate", counting)
    ev = evaluate(runs, "tiny:sd15", data, tmp_path, **kw | dict(batch_size=1))
    assert len(generated) == 16 - 3 and len(ev.records) == 16
    assert all(p.stat().st_size > 0 for p in saved)
    clean = evaluate(runs, "tiny:sd15", data, tmp_path / "clean", **kw | dict(batch_size=1))
    assert [r["text_fidelity"] for r in ev.records] == [r["text_fidelity"] for r in clean.records]


def test_retrained_rows_are_not_mixed_with_old_images(setup, done, tmp_path):
    "A run folder whose token changed since its images were made stops the evaluation, naming the digest."
    import shutil
    tmp, data, runs, kw = setup
    shutil.copytree(tmp / "eval", tmp_path / "eval")
    shutil.copytree(runs[0], tmp_path / "ti")
    train_dti("tiny:sd15", data / "dog", "<dog>", "dog", method="ti", steps=3, resolution=32,
              output_dir=tmp_path / "ti" / "dog", overwrite=True, progress=False)
    with pytest.raises(ValueError, match="was made with other digest"):
        evaluate([tmp_path / "ti"], "tiny:sd15", data, tmp_path / "eval", **kw)


def cli(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "dti_lens.cli", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd)


def test_cli_evaluate_runs_and_prints_the_summary(setup, done):
    tmp, data, runs, kw = setup
    (tmp / "p.txt").write_text("\n".join(PROMPTS.objects) + "\n")
    r = cli("evaluate", *runs, "--model", "tiny:sd15", "--references", data, "--output-dir", tmp / "cli",
            "--seeds", 0, "--steps", 2, "--resolution", 32, "--prompts", tmp / "p.txt",
            "--image-model", kw["image_model"], "--text-model", kw["text_model"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ti: image fidelity ") and lines[1].startswith("dti: image fidelity ")
    assert "(2 subject(s), 4 images)" in lines[0] and (tmp / "cli" / "report.html").is_file()
    assert json.loads((tmp / "cli" / "scores.jsonl").read_text().splitlines()[0])["template"] == PROMPTS.objects[0]


@pytest.mark.parametrize("case, message", [
    ("no_embeddings", "dti-lens evaluate: error: RUN_DIR"),
    ("empty_references", "--references: no images for subject"),
    ("no_placeholder", "--prompts 'p.txt': every template needs exactly one '{}'"),
    ("no_heads", "lacks `get_image_features`"),
])
def test_cli_bad_input_is_one_line_before_generation(setup, tmp_path, case, message):
    tmp, data, runs, kw = setup
    (tmp_path / "empty").mkdir()
    (tmp_path / "p.txt").write_text("a photo of a dog\n")
    args = dict(runs=[runs[0]], refs=data, prompts="dti", text=kw["text_model"])
    if case == "no_embeddings": args["runs"] = [tmp_path / "empty"]
    if case == "empty_references": args["refs"] = tmp_path / "empty"
    if case == "no_placeholder": args["prompts"] = "p.txt"
    if case == "no_heads": args["text"] = kw["image_model"]
    r = cli("evaluate", *args["runs"], "--model", "tiny:sd15", "--references", args["refs"], "--prompts", args["prompts"],
            "--output-dir", tmp_path / "out", "--image-model", kw["image_model"], "--text-model", args["text"], cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in r.stderr, r.stderr
    assert not (tmp_path / "out" / "images").exists()


@pytest.mark.skipif(find_chromium() is None, reason="headless Chromium not found")
def test_report_renders_offline(setup, done):
    check = browser_check(setup[0] / "eval" / "report.html")
    assert check["ok"] and check["requests"] == [] and check["errors"] == [], check
    assert len(check["figures"]) == 1 and check["figures"][0]["traces"] >= 4


def test_one_subject_summary_is_strict_json(setup, tmp_path):
    "One subject has no interval: summary.json says null (JSON has no NaN), the CSV says nan."
    _, data, runs, kw = setup
    evaluate([runs[0] / "dog"], "tiny:sd15", data, tmp_path, **kw | dict(seeds=[0]))
    def no_nan(c): raise AssertionError(f"{c} in summary.json")
    row = json.loads((tmp_path / "summary.json").read_text(), parse_constant=no_nan)[0]
    assert row["subjects"] == 1 and row["image_fidelity_low"] is None and row["text_fidelity"] is not None

"Trainer tests that need files: resume after a crash, the JSONL log, checkpoints, outputs, image folders."
import json, math
import pytest, torch
from PIL import Image
from dti_lens.train import train_dti
from dti_lens.zoo import tiny_pipeline
from dti_lens.data import synthetic_subject

SUBJECT = synthetic_subject(4, 64)
KW = dict(batch_size=2, progress=False, checkpoint_every=3)

def _crash_at(pipe, step):
    "Make the UNet raise on the forward pass of `step` (1-based), as a killed process would stop."
    forward, calls = pipe.unet.forward, []
    def f(*a, **k):
        calls.append(1)
        if len(calls) == step: raise KeyboardInterrupt("simulated crash")
        return forward(*a, **k)
    pipe.unet.forward = f
    return pipe

def _lines(path): return [json.loads(l) for l in path.read_text().splitlines()]

@pytest.mark.parametrize("method", ["dti", "ti"])
def test_resume_after_crash_is_exact(tmp_path, method):
    full = train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", method=method, steps=8, output_dir=tmp_path / "a", **KW)
    with pytest.raises(KeyboardInterrupt):
        train_dti(_crash_at(tiny_pipeline("sd15"), 5), SUBJECT, "<disc>", "toy", method=method, steps=8, output_dir=tmp_path / "b", **KW)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 3
    resumed = train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", method=method, steps=8, output_dir=tmp_path / "b", resume=True, **KW)
    assert torch.equal(full.embeddings["text_encoder"], resumed.embeddings["text_encoder"])  # bit-exact on CPU
    a, b = _lines(tmp_path / "a" / "log.jsonl"), _lines(tmp_path / "b" / "log.jsonl")
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]

def test_resume_extends_a_finished_run(tmp_path):
    full = train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=7, output_dir=tmp_path / "a", **KW)
    train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=4, output_dir=tmp_path / "b", **KW)
    more = train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=7, output_dir=tmp_path / "b", resume=True, **KW)
    assert torch.equal(full.embeddings["text_encoder"], more.embeddings["text_encoder"])

def test_resume_refuses_other_settings(tmp_path):
    train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=3, output_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match="other settings.*lr"):
        train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=6, lr=0.01, output_dir=tmp_path, resume=True, **KW)

def test_outputs_and_log(tmp_path):
    r = train_dti(tiny_pipeline("sdxl"), SUBJECT, "<disc>", "toy", steps=4, output_dir=tmp_path, validation_prompts=["a photo of a {}", "a {} on the beach"], **KW)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"learned_embeds.safetensors", "learned_embeds_2.safetensors", "disc.safetensors", "log.jsonl", "checkpoint.pt", "samples"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary file left behind
    log = _lines(tmp_path / "log.jsonl")
    assert len(log) == 4 and all(math.isfinite(r["loss"]) for r in log)
    assert set(log[0]) >= {"step", "loss", "lr", "text_encoder", "text_encoder_2"}
    assert set(log[0]["text_encoder"]) == {"norm", "angle_deg", "cos_mu"}
    assert len(list((tmp_path / "samples").glob("step-00004-*.png"))) == 2
    assert len(r.samples) == 1 and len(r.samples[0][1]) == 2

def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="images"):
        train_dti(tiny_pipeline("sd15"), tmp_path, "<disc>", "toy", steps=1, progress=False)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        train_dti(tiny_pipeline("sd15"), tmp_path, "<disc>", "toy", steps=1, progress=False)

def test_trains_from_a_folder_and_a_model_folder(tmp_path):
    for i, im in enumerate(SUBJECT): im.save(tmp_path / f"{i}.jpg")
    (tmp_path / ".DS_Store").write_bytes(b"\0\1")
    from dti_lens.zoo import save_tiny
    model = save_tiny("sd15", tmp_path / "model")
    with pytest.warns(UserWarning, match=".DS_Store"):
        r = train_dti(str(model), tmp_path, "<disc>", "toy", steps=2, batch_size=2, progress=False)
    assert r.embeddings["text_encoder"].shape == (1, 32)


def test_train_many_follows_the_json(tmp_path):
    "App. D.2: the init word is the prior unless 'prior' names one; per-subject 'images' and 'template' are used."
    from safetensors import safe_open
    from dti_lens.train import train_many
    for i, im in enumerate(SUBJECT): im.save(tmp_path / f"{i}.png")
    spec = {"a": {"path": ".", "class": "dog", "initialization": "toy"},
            "b": {"images": ["0.png", "1.png"], "class": "dog", "prior": "cat", "template": "a drawing of {}"}}
    (tmp_path / "dreambooth.json").write_text(json.dumps(spec))
    out = train_many(tmp_path / "dreambooth.json", tiny_pipeline("sd15"), tmp_path / "out", steps=1, batch_size=1, progress=False)
    assert sorted(out) == ["a", "b"]
    meta = {k: safe_open(str(tmp_path / "out" / k / "learned_embeds.safetensors"), "pt").metadata() for k in out}
    assert (meta["a"]["init"], meta["a"]["prior"]) == ("toy", "toy")
    assert (meta["b"]["init"], meta["b"]["prior"]) == ("dog", "cat")
    config = {k: torch.load(tmp_path / "out" / k / "checkpoint.pt", weights_only=True)["config"] for k in out}
    assert config["b"]["templates"] == ["a drawing of {}"] and len(config["a"]["templates"]) == 27
    cos = lambda k, w: float(torch.nn.functional.cosine_similarity(out[k].mu["text_encoder"][0], w, dim=0))
    enc = tiny_pipeline("sd15").text_encoder.get_input_embeddings().weight
    from dti_lens.encoders import word_pieces, text_encoders
    row = lambda w: enc[word_pieces(text_encoders(tiny_pipeline("sd15"))["text_encoder"], w)[0]].detach()
    assert cos("a", row("toy")) > 0.999 and cos("b", row("cat")) > 0.999   # mu is the prior word's direction


def _snapshot(folder):
    "Every file under `folder` with its bytes: a refused call must leave this unchanged."
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_is_never_silently_overwritten(tmp_path):
    train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=3, output_dir=tmp_path, **KW)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="holds a finished run .*resume=True to continue it, overwrite=True to replace it"):
        train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=3, output_dir=tmp_path, **KW)
    assert _snapshot(tmp_path) == before
    (tmp_path / "learned_embeds.safetensors").unlink()       # what a run killed before its end leaves
    with pytest.raises(ValueError, match="holds a partial run"):
        train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=3, output_dir=tmp_path, **KW)


def test_overwrite_replaces_the_run(tmp_path):
    train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=5, output_dir=tmp_path, **KW)
    fresh = train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=4, output_dir=tmp_path / "fresh", **KW)
    again = train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=4, output_dir=tmp_path, overwrite=True, **KW)
    assert torch.equal(fresh.embeddings["text_encoder"], again.embeddings["text_encoder"])  # nothing of the old run leaks in
    assert [r["step"] for r in _lines(tmp_path / "log.jsonl")] == [1, 2, 3, 4]


def test_resume_without_a_checkpoint_says_so_and_starts_fresh(tmp_path):
    with pytest.warns(UserWarning, match="resume: no checkpoint in .*training starts at step 0"):
        r = train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=2, output_dir=tmp_path, resume=True, **KW)
    assert len(r.log) == 2


def test_resume_never_goes_backwards_and_touches_no_file(tmp_path):
    train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=6, output_dir=tmp_path, **KW)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="checkpoint in .* is at step 6, past steps=4; pass steps >= 6"):
        train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=4, output_dir=tmp_path, resume=True, **KW)
    assert _snapshot(tmp_path) == before


def test_resume_refuses_changed_images(tmp_path):
    photos = tmp_path / "photos"; photos.mkdir()
    for i, im in enumerate(SUBJECT): im.save(photos / f"{i}.png")
    train_dti(tiny_pipeline("sd15"), photos, "<disc>", "toy", steps=3, output_dir=tmp_path / "run", **KW)
    SUBJECT[0].rotate(90).save(photos / "extra.png"); (photos / "1.png").unlink()
    before = _snapshot(tmp_path / "run")
    with pytest.raises(ValueError, match=r"training images changed since the checkpoint .*\(added: extra.png; removed: 1.png\)"):
        train_dti(tiny_pipeline("sd15"), photos, "<disc>", "toy", steps=6, output_dir=tmp_path / "run", resume=True, **KW)
    assert _snapshot(tmp_path / "run") == before


def test_a_tampered_checkpoint_is_refused_without_unsafe_advice(tmp_path):
    import pickle, os
    train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=3, output_dir=tmp_path, **KW)
    (tmp_path / "checkpoint.pt").write_bytes(pickle.dumps(os.system))   # what an attacker could leave there
    with pytest.raises(ValueError, match="is not a checkpoint this trainer wrote") as e:
        train_dti(tiny_pipeline("sd15"), SUBJECT, "<disc>", "toy", steps=6, output_dir=tmp_path, resume=True, **KW)
    assert "weights_only" not in str(e.value)

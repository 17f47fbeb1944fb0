"""The tiny Wan2.1-T2V and Flux.1 pipelines on disk (nbs/02_zoo.ipynb): written like a hub snapshot, read back with
the real loaders, cached, and able to generate from the folder. The notebook checks their configs, tokenizers and
`encode_prompt` in memory; tests/test_invariants.py runs every family of `BUILDERS` through the trainer."""
import json

import pytest
import torch
from safetensors.torch import load_file

from dti_lens.zoo import BUILDERS, REAL_IDS, WORDS, save_tiny, tiny_pipeline

KINDS = ["flux", "wan"]
PIPELINES = {"wan": "WanPipeline", "flux": "FluxPipeline"}
COMPONENTS = {  # model_index.json entries, as in the real repositories
    "wan": {"tokenizer": ["transformers", "T5Tokenizer"], "text_encoder": ["transformers", "UMT5EncoderModel"],
            "vae": ["diffusers", "AutoencoderKLWan"], "transformer": ["diffusers", "WanTransformer3DModel"],
            "scheduler": ["diffusers", "UniPCMultistepScheduler"]},
    "flux": {"tokenizer": ["transformers", "CLIPTokenizer"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer_2": ["transformers", "T5Tokenizer"],
             "text_encoder_2": ["transformers", "T5EncoderModel"],
             "vae": ["diffusers", "AutoencoderKL"], "transformer": ["diffusers", "FluxTransformer2DModel"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]},
}
T5_TOKENIZERS = {"wan": "tokenizer", "flux": "tokenizer_2"}  # the sub-folder of each family's T5 tokenizer
FRAMES = {"wan": dict(num_frames=1), "flux": {}}  # an image is a 1-frame video for Wan


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    "Each new family saved once, with seed 0."
    root = tmp_path_factory.mktemp("zoo")
    return {k: save_tiny(k, root / k) for k in KINDS}


def load(folder):
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_every_family_is_a_builder():
    "The invariant tests and the trainer iterate over BUILDERS: all six families are in it."
    assert sorted(BUILDERS) == ["flux", "sana", "sd15", "sd21", "sdxl", "wan"]
    assert REAL_IDS["wan"] == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert REAL_IDS["flux"] == "black-forest-labs/FLUX.1-dev"


@pytest.mark.parametrize("kind", KINDS)
def test_saved_like_a_hub_snapshot(kind, saved):
    folder = saved[kind]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == PIPELINES[kind]
    for name, entry in COMPONENTS[kind].items():
        assert index[name] == entry, name
        assert any((folder / name).iterdir()), name
    assert not list(folder.parent.glob(f".{kind}-*")), "the temporary folder is renamed into place"


@pytest.mark.parametrize("kind", KINDS)
def test_loads_back_as_the_real_class_with_the_saved_weights(kind, saved):
    pipe = load(saved[kind])
    assert type(pipe).__name__ == PIPELINES[kind]
    weights = load_file(saved[kind] / "transformer" / "diffusion_pytorch_model.safetensors")
    state = pipe.transformer.state_dict()
    assert set(weights) == set(state)
    for k, w in weights.items(): torch.testing.assert_close(state[k], w, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("kind", KINDS)
def test_t5_tokenizer_reloads_with_autotokenizer(kind, saved):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(saved[kind] / T5_TOKENIZERS[kind])
    assert type(tok).__name__ == "T5Tokenizer" and tok.model_max_length == 512
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id) == (0, 1, 2, None)
    for w in WORDS:  # one piece inside a prompt
        assert tok.tokenize(f"a {w} on the beach") == ["▁a", f"▁{w}", "▁on", "▁the", "▁beach"], w
    assert len(tok.tokenize("teddybear")) > 1
    assert tok.unk_token_id not in tok("".join(map(chr, range(128)))).input_ids
    assert tok.convert_ids_to_tokens(tok("a dog").input_ids) == ["▁a", "▁dog", "</s>"]
    tok.add_tokens(["<dog>"])  # a placeholder, the way diffusers' load_textual_inversion adds it
    want = ["▁a", "▁photo", "▁of", "▁a", "<dog>", "▁on", "▁the", "▁beach"]
    assert tok.tokenize("a photo of a <dog> on the beach") == want


def test_seed_fixes_the_weights(tmp_path):
    folders = [save_tiny("flux", tmp_path / name, seed=s) for name, s in (("a", 0), ("b", 0), ("c", 1))]
    t5 = [load_file(f / "text_encoder_2" / "model.safetensors")["shared.weight"] for f in folders]
    assert torch.equal(t5[0], t5[1]) and not torch.equal(t5[0], t5[2])


def test_tiny_pipeline_builds_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DTI_LENS_CACHE", str(tmp_path))
    first = tiny_pipeline("wan")
    (folder,) = (tmp_path / "zoo").iterdir()
    assert folder.name.startswith("wan-0-")
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    again = tiny_pipeline("wan")
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp, "the cached folder is reused, not rebuilt"
    assert type(again).__name__ == "WanPipeline"
    torch.testing.assert_close(again.text_encoder.state_dict(), first.text_encoder.state_dict(), rtol=0, atol=0)


def test_unknown_kind_names_every_kind(tmp_path):
    for make in (lambda: save_tiny("sd3", tmp_path / "a"), lambda: tiny_pipeline("sd3", folder=tmp_path / "b")):
        with pytest.raises(ValueError, match="kind must be one of") as e: make()
        for k in BUILDERS: assert repr(k) in str(e.value), k
    assert not list(tmp_path.iterdir()), "nothing is written for an unknown kind"


@pytest.mark.parametrize("kind", KINDS)
def test_one_step_generation_from_the_folder(kind, saved):
    "64 px in one step: a 1-frame video for Wan (an image as a 1-frame video), an image for Flux."
    pipe = load(saved[kind])
    kw = dict(height=64, width=64, num_inference_steps=1, output_type="np", **FRAMES[kind])
    out = pipe("a photo of a dog", generator=torch.Generator().manual_seed(0), **kw)
    a = out.frames if kind == "wan" else out.images
    assert a.shape == ((1, 1, 64, 64, 3) if kind == "wan" else (1, 64, 64, 3))
    assert 0 <= a.min() and a.max() <= 1  # false on NaN too


@pytest.mark.parametrize("kind", KINDS)
def test_call_with_the_pipelines_own_embeddings_matches_the_prompt(kind, saved):
    "What a trainer adapter relies on: `__call__` with `encode_prompt`'s embeddings samples as with the prompt."
    pipe = load(saved[kind])
    prompt = "a photo of a dog on the beach"
    kw = dict(height=64, width=64, num_inference_steps=1, output_type="np", **FRAMES[kind])
    run = lambda **k: pipe(**k, **kw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if kind == "wan":
            embeds, negative = pipe.encode_prompt(prompt, max_sequence_length=512)  # and "" for guidance
            a, b = run(prompt=prompt).frames, run(prompt_embeds=embeds, negative_prompt_embeds=negative).frames
        else:
            embeds, pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, max_sequence_length=512)
            a, b = run(prompt=prompt).images, run(prompt_embeds=embeds, pooled_prompt_embeds=pooled).images
    torch.testing.assert_close(torch.from_numpy(b), torch.from_numpy(a), rtol=0, atol=1e-6)

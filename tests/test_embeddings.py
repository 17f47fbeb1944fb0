"""Embedding files on disk: atomic writes, other tools' formats, a malicious pickle, and diffusers' own loader reading ours."""
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from dti_lens.embeddings import load_embeddings, read_embeddings, save_embeddings, write_atomic, write_text_atomic
from dti_lens.encoders import placeholder_tokens, text_encoders
from dti_lens.zoo import tiny_pipeline

PROMPT = "a photo of a <dog> on the beach"


def rows_of(pipe, name, tokens):
    enc = text_encoders(pipe)[name]
    return enc.table[enc.tokenizer.convert_tokens_to_ids(tokens)].detach()


def state(pipe):
    "What loading may change: every tokenizer's length and every token table."
    return {k: (len(e.tokenizer), e.table.detach().clone()) for k, e in text_encoders(pipe).items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a: assert a[k][0] == b[k][0] and torch.equal(a[k][1], b[k][1]), k


# --- atomic writes -------------------------------------------------------------------------------

def test_write_text_atomic_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "fig.html"
    write_text_atomic(target, "old")
    def crash(*a, **k): raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError): write_text_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["fig.html"]


def test_write_atomic_keeps_old_file_when_the_writer_raises(tmp_path):
    target = tmp_path / "emb.safetensors"
    save_file({"<x>": torch.ones(1, 4)}, target)
    seen = []
    def half(p):
        seen.append(p.name); p.write_bytes(b"partial"); raise RuntimeError("killed")
    with pytest.raises(RuntimeError, match="killed"): write_atomic(target, half)
    assert seen[0].startswith(".emb.safetensors.")
    assert torch.equal(load_file(target)["<x>"], torch.ones(1, 4))
    assert [p.name for p in tmp_path.iterdir()] == ["emb.safetensors"]


def test_write_atomic_gives_normal_permissions(tmp_path):
    umask = os.umask(0o027); os.umask(umask)
    path = write_text_atomic(tmp_path / "a" / "b.txt", "é")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert path.read_text(encoding="utf-8") == "é"


# --- other tools' formats ------------------------------------------------------------------------

def test_a1111_pt_loads_with_weights_only_and_registers_its_name(tmp_path):
    v = torch.randn(2, 32)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": v}, "name": "mytok", "step": 100,
                "sd_checkpoint": "x", "sd_checkpoint_name": "y"}, tmp_path / "whatever.pt")
    f = read_embeddings(tmp_path / "whatever.pt")
    assert f.kind == "a1111_pt" and f.token == "mytok" and f.metadata["step"] == 100
    pipe = tiny_pipeline("sd15")
    assert load_embeddings(pipe, tmp_path / "whatever.pt") == {"text_encoder": ["mytok", "mytok_1"]}
    assert torch.equal(rows_of(pipe, "text_encoder", ["mytok", "mytok_1"]), v)


def test_a1111_sdxl_pt_with_clip_l_and_clip_g(tmp_path):
    l, g = torch.randn(1, 32), torch.randn(1, 40)
    torch.save({"clip_l": l, "clip_g": g}, tmp_path / "<cat>.pt")
    pipe = tiny_pipeline("sdxl")
    assert read_embeddings(tmp_path / "<cat>.pt").kind == "sdxl_single"
    assert load_embeddings(pipe, tmp_path / "<cat>.pt") == {"text_encoder": ["<cat>"], "text_encoder_2": ["<cat>"]}
    assert torch.equal(rows_of(pipe, "text_encoder", ["<cat>"]), l) and torch.equal(rows_of(pipe, "text_encoder_2", ["<cat>"]), g)


def test_emb_params_loads_into_the_encoder_of_its_width(tmp_path):
    g = torch.randn(2, 40)
    save_file({"emb_params": g}, tmp_path / "kohya.safetensors", metadata={"name": "<k>"})
    pipe = tiny_pipeline("sdxl")
    assert load_embeddings(pipe, tmp_path / "kohya.safetensors") == {"text_encoder_2": ["<k>", "<k>_1"]}
    assert torch.equal(rows_of(pipe, "text_encoder_2", ["<k>", "<k>_1"]), g)
    assert len(pipe.tokenizer) == pipe.tokenizer.vocab_size   # encoder 1 untouched


class Evil:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"string_to_param": {"*": Evil(marker)}, "name": "evil"}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refusing to load"): read_embeddings(tmp_path / "evil.pt")
    pipe = tiny_pipeline("sd15")
    before = state(pipe)
    with pytest.raises(ValueError, match="refusing to load"): load_embeddings(pipe, tmp_path / "evil.pt")
    assert not marker.exists()
    assert_same_state(before, state(pipe))


def test_width_mismatch_leaves_pipe_unchanged(tmp_path):
    save_embeddings(tmp_path, "<dog>", {"text_encoder": torch.randn(2, 40)})
    pipe = tiny_pipeline("sd15")
    before = state(pipe)
    with pytest.raises(ValueError, match=r"has width 40, but the pipeline's encoders have widths \{'text_encoder': 32\}"):
        load_embeddings(pipe, tmp_path / "learned_embeds.safetensors")
    assert_same_state(before, state(pipe))


def test_token_already_in_vocab_is_an_error_and_changes_nothing(tmp_path):
    save_embeddings(tmp_path, "<dog>", {"text_encoder": torch.randn(1, 32), "text_encoder_2": torch.randn(1, 40)})
    pipe = tiny_pipeline("sdxl")
    with pytest.raises(ValueError, match="'dog</w>' is already in text_encoder's vocabulary"):
        load_embeddings(pipe, tmp_path, token="dog</w>")
    load_embeddings(pipe, tmp_path)
    before = state(pipe)
    with pytest.raises(ValueError, match="'<dog>' is already in"): load_embeddings(pipe, tmp_path / "dog.safetensors")
    assert_same_state(before, state(pipe))


def test_only_encoder_2_clash_changes_nothing(tmp_path):
    "The check covers every encoder before the first is touched."
    save_embeddings(tmp_path, "<dog>", {"text_encoder": torch.randn(1, 32), "text_encoder_2": torch.randn(1, 40)})
    pipe = tiny_pipeline("sdxl")
    text_encoders(pipe)["text_encoder_2"].tokenizer.add_tokens(["<dog>"])
    before = state(pipe)
    with pytest.raises(ValueError, match="already in text_encoder_2's vocabulary"): load_embeddings(pipe, tmp_path)
    assert_same_state(before, state(pipe))


def test_nan_embedding_is_refused_by_save(tmp_path):
    bad = torch.randn(2, 32); bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="embeddings\\['text_encoder'\\] has NaN or inf"):
        save_embeddings(tmp_path / "out", "<dog>", {"text_encoder": bad})
    big = torch.full((1, 32), 1e300, dtype=torch.float64)   # finite in float64, inf once saved as float32
    with pytest.raises(ValueError, match="NaN or inf"): save_embeddings(tmp_path / "out", "<dog>", {"text_encoder": big})
    assert not (tmp_path / "out").exists()


def test_saved_tensors_are_float32_contiguous_cpu(tmp_path):
    v = torch.randn(32, 3, dtype=torch.float64).T.requires_grad_()   # (3, 32), not contiguous, with grad
    paths = save_embeddings(tmp_path, "<dog>", {"text_encoder": v})
    saved = load_file(paths["text_encoder"])["<dog>"]
    assert saved.dtype == torch.float32 and torch.equal(saved, v.detach().float())


# --- diffusers' own loader reads our files -------------------------------------------------------

@pytest.mark.parametrize("n", [1, 3])
def test_diffusers_loads_our_sd15_file_like_we_do(tmp_path, n):
    v = torch.randn(n, 32)
    save_embeddings(tmp_path, "<dog>", {"text_encoder": v})
    theirs, ours = tiny_pipeline("sd15"), tiny_pipeline("sd15")
    theirs.load_textual_inversion(str(tmp_path / "learned_embeds.safetensors"), token="<dog>")
    load_embeddings(ours, tmp_path)
    tokens = placeholder_tokens("<dog>", n)
    assert theirs.tokenizer.get_added_vocab() == ours.tokenizer.get_added_vocab()
    assert torch.equal(rows_of(theirs, "text_encoder", tokens), v) and torch.equal(rows_of(ours, "text_encoder", tokens), v)
    tokenized = [p.tokenizer.tokenize(p.maybe_convert_prompt(PROMPT, p.tokenizer)) for p in (theirs, ours)]
    assert tokenized[0] == tokenized[1] and [t for t in tokenized[0] if t.startswith("<dog>")] == tokens
    with torch.no_grad():
        a, b = (p.encode_prompt(PROMPT, "cpu", 1, False)[0] for p in (theirs, ours))
    assert torch.equal(a, b)


def sdxl_prompt_embeds(pipe):
    with torch.no_grad():
        pe, _, pooled, _ = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    return pe, pooled


@pytest.mark.parametrize("how", ["single_file", "two_files"])
def test_diffusers_loads_our_sdxl_files_like_we_do(tmp_path, how):
    learned = {"text_encoder": torch.randn(2, 32), "text_encoder_2": torch.randn(2, 40)}
    paths = save_embeddings(tmp_path, "<dog>", learned)
    theirs, ours = tiny_pipeline("sdxl"), tiny_pipeline("sdxl")
    if how == "single_file":
        sd = load_file(paths["sdxl_single"])
        theirs.load_textual_inversion(sd["clip_l"], token="<dog>", text_encoder=theirs.text_encoder, tokenizer=theirs.tokenizer)
        theirs.load_textual_inversion(sd["clip_g"], token="<dog>", text_encoder=theirs.text_encoder_2, tokenizer=theirs.tokenizer_2)
        load_embeddings(ours, paths["sdxl_single"])
    else:
        theirs.load_textual_inversion(str(paths["text_encoder"]), token="<dog>", text_encoder=theirs.text_encoder, tokenizer=theirs.tokenizer)
        theirs.load_textual_inversion(str(paths["text_encoder_2"]), token="<dog>", text_encoder=theirs.text_encoder_2, tokenizer=theirs.tokenizer_2)
        load_embeddings(ours, tmp_path)
    tokens = placeholder_tokens("<dog>", 2)
    for k, v in learned.items():
        assert torch.equal(rows_of(theirs, k, tokens), v) and torch.equal(rows_of(ours, k, tokens), v)
    for tok in ("tokenizer", "tokenizer_2"):
        a, b = getattr(theirs, tok), getattr(ours, tok)
        assert a.tokenize(theirs.maybe_convert_prompt(PROMPT, a)) == b.tokenize(ours.maybe_convert_prompt(PROMPT, b))
    for a, b in zip(sdxl_prompt_embeds(theirs), sdxl_prompt_embeds(ours)): assert torch.equal(a, b)


def test_we_load_diffusers_sdxl_training_output(tmp_path):
    "diffusers' SDXL script saves {token: rows} twice, as learned_embeds.safetensors and learned_embeds_2.safetensors."
    l, g = torch.randn(1, 32), torch.randn(1, 40)
    save_file({"<cat>": l}, tmp_path / "learned_embeds.safetensors")
    save_file({"<cat>": g}, tmp_path / "learned_embeds_2.safetensors")
    pipe = tiny_pipeline("sdxl")
    assert load_embeddings(pipe, tmp_path) == {"text_encoder": ["<cat>"], "text_encoder_2": ["<cat>"]}
    assert torch.equal(rows_of(pipe, "text_encoder_2", ["<cat>"]), g)


def test_folder_with_someone_elses_sdxl_file_takes_the_file_name(tmp_path):
    "An A1111/kohya SDXL file stores no token: the file name is the token, as in A1111."
    save_file({"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 40)}, tmp_path / "mychar.safetensors")
    save_file({"unrelated": torch.randn(3)}, tmp_path / "other.safetensors")
    pipe = tiny_pipeline("sdxl")
    assert load_embeddings(pipe, tmp_path) == {"text_encoder": ["mychar"], "text_encoder_2": ["mychar"]}


def test_sana_needs_lower_case_tokens(tmp_path):
    save_embeddings(tmp_path, "<Dog>", {"text_encoder": torch.randn(1, 16)})
    pipe = tiny_pipeline("sana")
    before = state(pipe)
    with pytest.raises(ValueError, match="lower-case"): load_embeddings(pipe, tmp_path)
    assert_same_state(before, state(pipe))
    assert load_embeddings(pipe, tmp_path, token="<dog>") == {"text_encoder": ["<dog>"]}


@pytest.mark.parametrize("kind", ["a1111_pt", "emb_params", "diffusers_pt", "diffusers_safetensors"])
def test_write_like_keeps_each_format(tmp_path, kind):
    from dti_lens.embeddings import read_embeddings, write_like
    v = torch.randn(2, 32)
    src = tmp_path / ("in.pt" if kind.endswith("pt") else "in.safetensors")
    if kind == "a1111_pt": torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": v}, "name": "mytok", "step": 100}, src)
    elif kind == "emb_params": save_file({"emb_params": v}, src, metadata={"name": "mytok"})
    elif kind == "diffusers_pt": torch.save({"<tok>": v}, src)
    else: save_file({"<tok>": v}, src)
    emb = read_embeddings(src)
    out = write_like(emb, tmp_path / src.name.replace("in", "out"), {k: 3 * r for k, r in emb.vectors.items()})
    back = read_embeddings(out)
    assert back.kind == emb.kind and back.token == emb.token
    assert all(torch.equal(back.vectors[k], 3 * emb.vectors[k]) for k in emb.vectors)
    if kind == "a1111_pt":
        raw = torch.load(out, weights_only=True)
        assert raw["step"] == 100 and raw["string_to_token"] == {"*": 265}  # A1111's other entries are kept

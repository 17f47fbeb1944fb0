"""Embedding files on disk: atomic writes, other tools' formats (A1111 images included), a malicious pickle, diffusers' own
loader reading ours, every format x layout x dtype written back as it was, folders, and TEA on files (`adjust_file`)."""
import base64, json, math, os, shutil, warnings, zlib

import numpy as np

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dti_lens.embeddings import (embedding_files, load_embeddings, read_embeddings, save_embeddings, write_atomic,
                                 write_like, write_text_atomic)
from dti_lens.data import synthetic_subject
from dti_lens.encoders import placeholder_tokens, text_encoders
from dti_lens.pipelines import adapter
from dti_lens.train import train_dti
from dti_lens.zoo import BUILDERS, tiny_pipeline

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
    with pytest.raises(ValueError, match="refusing to load") as err: read_embeddings(tmp_path / "evil.pt")
    assert "posix.system" in str(err.value)                      # what it would have run
    assert "False" not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__
    pipe = tiny_pipeline("sd15")
    before = state(pipe)
    with pytest.raises(ValueError, match="refusing to load"): load_embeddings(pipe, tmp_path / "evil.pt")
    assert not marker.exists()
    assert_same_state(before, state(pipe))


def test_width_mismatch_leaves_pipe_unchanged(tmp_path):
    save_embeddings(tmp_path, "<dog>", {"text_encoder": torch.randn(2, 40)})
    pipe = tiny_pipeline("sd15")
    before = state(pipe)
    with pytest.raises(ValueError, match=r"holds rows of width 40 and does not name an encoder; the model's encoders have "
                                         r"widths \{'text_encoder': 32\}"):
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


# --- every family: a training run's folder loads into a fresh pipeline --------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "kind -> (pipeline, TrainResult, output folder) of 2 dti steps on <tok>, several vectors ('teddybear')."
    runs = {}
    def get(kind):
        if kind not in runs:
            out, pipe = tmp_path_factory.mktemp(kind), tiny_pipeline(kind)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # "init 'teddybear' is n word pieces"
                r = train_dti(pipe, synthetic_subject(2, 64), "<tok>", "teddybear", method="dti", steps=2,
                              batch_size=1, grad_accum=1, resolution=64, progress=False, output_dir=out)
            runs[kind] = pipe, r, out
        return runs[kind]
    return get


def conditioning(pipe, prompt="a photo of a <tok>", n=1):
    "The conditioning of `prompt` from the pipeline's own encode_prompt (n vectors written out where needed)."
    fam = adapter(pipe)
    with torch.no_grad(): return fam.encode_prompt([fam.pipeline_prompt(prompt, "<tok>", n)])


FILES = {"text_encoder": "learned_embeds.safetensors", "text_encoder_2": "learned_embeds_2.safetensors"}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_a_trained_folder_round_trips_on_every_family(trained, kind):
    "Each encoder's rows as the trainer left them; a fresh pipeline conditions as the trained one."
    pipe, r, out = trained(kind)
    fresh = tiny_pipeline(kind)
    assert load_embeddings(fresh, out) == r.tokens
    for name, tokens in r.tokens.items():
        rows = load_file(out / FILES[name])["<tok>"]          # the file as safetensors reads it
        assert rows.shape == (len(tokens), text_encoders(fresh)[name].width)
        for p in (pipe, fresh): assert torch.equal(rows_of(p, name, tokens), rows), name
    want, got = (conditioning(p, n=len(next(iter(r.tokens.values())))) for p in (pipe, fresh))
    assert want.keys() == got.keys() and "encoder_hidden_states" in want
    for k in want: torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=f"{kind}: {k}")
    single = ["tok.safetensors"] if kind == "sdxl" else []  # clip_l/clip_g: the A1111 file is SDXL's only
    assert sorted(f.name for f in out.glob("*.safetensors")) == sorted([FILES[n] for n in r.tokens] + single)


def test_diffusers_loads_our_flux_run_like_we_do(trained):
    "FluxPipeline.load_textual_inversion fills CLIP (pooled output); pointed at T5, as for SDXL, T5 too."
    _, r, out = trained("flux")
    theirs, ours = tiny_pipeline("flux"), tiny_pipeline("flux")
    theirs.load_textual_inversion(str(out / "learned_embeds.safetensors"), token="<tok>")
    load_embeddings(ours, out)
    for name, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        rows = load_file(out / FILES[name])["<tok>"]
        assert torch.equal(rows_of(ours, name, r.tokens[name]), rows), name
        if name == "text_encoder_2":
            assert "<tok>" not in theirs.tokenizer_2.get_vocab()   # the plain call left T5 alone
            theirs.load_textual_inversion(str(out / FILES[name]), token="<tok>",
                                          text_encoder=theirs.text_encoder_2, tokenizer=theirs.tokenizer_2)
        assert getattr(theirs, tok).get_added_vocab() == getattr(ours, tok).get_added_vocab(), tok
        assert torch.equal(rows_of(theirs, name, r.tokens[name]), rows), name
        a, b = conditioning(theirs), conditioning(ours)
        key = "pooled_projections" if name == "text_encoder" else "encoder_hidden_states"
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(b["pooled_projections"], conditioning(tiny_pipeline("flux"))["pooled_projections"])


def test_wan_generates_with_a_loaded_token(trained):
    "WanPipeline has no textual-inversion loader: ours adds the token to UMT5; its call looks it up."
    _, r, out = trained("wan")
    pipe = tiny_pipeline("wan")
    load_embeddings(pipe, out)
    rows = load_file(out / "learned_embeds.safetensors")["<tok>"]
    ids = pipe.tokenizer.convert_tokens_to_ids(placeholder_tokens("<tok>", len(rows)))
    seen = []   # (input ids, UMT5 input embeddings) of each lookup: the prompt's, then the negative prompt's
    record = lambda m, args, o: seen.append((args[0], o))
    hook = pipe.text_encoder.get_input_embeddings().register_forward_hook(record)
    prompt = adapter(pipe).pipeline_prompt("a photo of a <tok>", "<tok>", len(rows))
    try:
        frames = pipe(prompt, num_frames=1, height=64, width=64, num_inference_steps=1, output_type="np",
                      generator=torch.Generator().manual_seed(0)).frames
    finally: hook.remove()
    assert frames.shape == (1, 1, 64, 64, 3) and np.isfinite(frames).all()
    with_token = [(x[0], e[0]) for x, e in seen if torch.isin(x, torch.tensor(ids)).any()]
    assert len(with_token) == 1, len(seen)
    x, e = with_token[0]
    for tid, row in zip(ids, rows):
        (pos,), = (x == tid).nonzero(as_tuple=True)
        assert torch.equal(e[pos], row)


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


# --- A1111 embedding images, written and read here from A1111's format -----------------------------
# modules/textual_inversion/image_embedding.py: the .pt dictionary as JSON with tensors as {"TORCHTENSOR": lists}; in a
# PNG text chunk "sd-ti-embedding" (base64), and in the pixels: zlib-compressed, low nibbles in a strip left of the
# picture, high nibbles right, 3 per pixel, XORed with (x mod 255) & 15 of x <- (1664525 x + 1013904223) mod 2^32.

def xor_stream(n):
    out, x = [], 0
    for _ in range(n):
        x = (1664525 * x + 1013904223) % 2**32
        out.append(x % 255 & 15)
    return np.array(out, np.uint8)


def a1111_json(v, name="mycard", step=500):
    return {"string_to_token": {"*": 265}, "string_to_param": {"*": {"TORCHTENSOR": v.tolist()}}, "name": name,
            "step": step, "sd_checkpoint": "a9263745", "sd_checkpoint_name": "v1-5-pruned"}


def hide(picture, data, border=3, seed=0):
    "A card laid out as A1111's insert_image_data_embed does (random decoration in the high nibbles), in a black border."
    raw = np.frombuffer(zlib.compress(json.dumps(data).encode(), 9), np.uint8)
    h = picture.height
    size = raw.size + (h - raw.size % h)
    size += 3 * h - size % (3 * h)                                  # A1111's padding: a multiple of 3h, data repeated
    key = xor_stream(size).reshape(h, -1, 3)
    deco = lambda: np.random.default_rng(seed).integers(1, 16, key.shape, dtype=np.uint8) << 4
    lo, hi = ((np.resize(nib, size).reshape(h, -1, 3) ^ key) | deco() for nib in (raw & 15, raw >> 4))
    w, pw = lo.shape[1], picture.width
    card = np.zeros((h + 2 * border, 2 * w + pw + 2 + 2 * border, 3), np.uint8)
    body = card[border:border + h, border:border + 2 * w + pw + 2]
    body[:, :w], body[:, w + 1:w + 1 + pw], body[:, w + 2 + pw:] = lo, np.asarray(picture.convert("RGB")), hi
    return Image.fromarray(card)


def unhide(img):
    "The JSON in an A1111 card's pixels, read as A1111's extract_image_data_embed does."
    a = np.asarray(img.convert("RGB"))
    lit = a.all(2)
    r, c = np.flatnonzero(lit.any(1)), np.flatnonzero(lit.any(0))
    a = a[r[0]:r[-1] + 1, c[0]:c[-1] + 1] & 15
    black = np.flatnonzero(a.sum((0, 2)) == 0)
    lo, hi = a[:, :black.min()], a[:, black.max() + 1:]
    key = xor_stream(lo.size).reshape(lo.shape)
    return json.loads(zlib.decompress((((hi ^ key) << 4) | (lo ^ key)).tobytes()))


def png_card(path, v, text=True, pixels=False, zip=False, **kw):
    picture = Image.new("RGB", (48, 40), (255, 255, 200))
    img = hide(picture, a1111_json(v, **kw)) if pixels else picture
    info = PngImagePlugin.PngInfo()
    if text: info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(a1111_json(v, **kw)).encode()).decode(), zip=zip)
    info.add_text("parameters", "a photo of mycard")
    img.save(path, pnginfo=info)
    return path


def test_xor_stream_matches_a1111s_reference_values():
    "The first values A1111's image_embedding.py checks its generator against (before the nibble mask)."
    ref = [253, 242, 127, 44, 157, 27, 239, 133, 38, 79, 167, 4, 177, 95, 130, 79, 78, 14, 52, 215]
    assert xor_stream(20).tolist() == [x & 15 for x in ref]


@pytest.mark.parametrize("chunk", ["tEXt", "zTXt"])
def test_png_card_text_chunk_reads_bit_exactly(tmp_path, chunk):
    v = torch.randn(3, 32)
    f = read_embeddings(png_card(tmp_path / "mycard.png", v, zip=chunk == "zTXt"))
    assert (f.kind, f.token, f.card, f.metadata["step"]) == ("a1111_image", "mycard", ("text",), 500)
    assert torch.equal(f.vectors[None], v) and f.stored == {None: ((3, 32), torch.float32)}


@pytest.mark.parametrize("fmt", ["webp", "png"])
def test_pixel_card_reads_bit_exactly(tmp_path, fmt):
    "No text chunk: the embedding is read from the pixels, a (d,) vector stays (d,)."
    v = torch.randn(32)
    hide(Image.new("RGB", (48, 40), (30, 60, 90)), a1111_json(v, name="pix")).save(tmp_path / f"pix.{fmt}", lossless=True)
    f = read_embeddings(tmp_path / f"pix.{fmt}")
    assert (f.kind, f.token, f.card, f.stored) == ("a1111_image", "pix", ("pixels",), {None: ((32,), torch.float32)})
    assert torch.equal(f.vectors[None], v[None])
    pipe = tiny_pipeline("sd15")
    assert load_embeddings(pipe, tmp_path / f"pix.{fmt}") == {"text_encoder": ["pix"]}
    assert torch.equal(rows_of(pipe, "text_encoder", ["pix"]), v[None])


def test_image_without_embedding_is_refused_by_name(tmp_path):
    v = torch.randn(2, 32)
    hide(Image.new("RGB", (48, 40), (30, 60, 90)), a1111_json(v)).save(tmp_path / "lossy.webp", quality=80)
    Image.new("RGB", (48, 40)).save(tmp_path / "plain.png")
    for name in ("lossy.webp", "plain.png"):
        with pytest.raises(ValueError, match=f"{name} is an image without an embedding"): read_embeddings(tmp_path / name)


@pytest.mark.parametrize("form", ["text", "pixels", "both", "webp"])
def test_card_written_back_as_the_same_kind_of_card(tmp_path, form):
    v = torch.randn(2, 32)
    if form == "webp":
        src = tmp_path / "in.webp"
        hide(Image.new("RGB", (48, 40), (30, 60, 90)), a1111_json(v)).save(src, lossless=True)
    else: src = png_card(tmp_path / "in.png", v, text=form != "pixels", pixels=form != "text")
    emb = read_embeddings(src)
    out = write_like(emb, tmp_path / f"out{src.suffix}", {None: 3 * emb.vectors[None]}, metadata={"tea_anchor": "dog"})
    with Image.open(out) as img:
        assert img.format == ("WEBP" if form == "webp" else "PNG")
        found = {}
        if "sd-ti-embedding" in getattr(img, "text", {}): found["text"] = json.loads(base64.b64decode(img.text["sd-ti-embedding"]))
        if form != "text": found["pixels"] = unhide(img)
        if form != "webp": assert img.text["parameters"] == "a photo of mycard"
    assert set(found) == {"text": {"text"}, "pixels": {"pixels"}, "both": {"text", "pixels"}, "webp": {"pixels"}}[form]
    for data in found.values():
        assert torch.equal(torch.tensor(data["string_to_param"]["*"]["TORCHTENSOR"], dtype=torch.float32), 3 * v)
        assert (data["name"], data["step"], data["string_to_token"], data["dti_lens"]) == ("mycard", 500, {"*": 265}, {"tea_anchor": "dog"})
    assert read_embeddings(out).card == emb.card


# --- write_like keeps every format, layout and dtype ----------------------------------------------

LAYOUTS = {"d": (32,), "1d": (1, 32), "nd": (3, 32)}
FORMATS = ["diffusers_safetensors", "diffusers_bin", "diffusers_tensor", "a1111_pt", "sdxl_safetensors", "sdxl_pt",
           "emb_params", "card_png", "card_webp"]
CASES = [(k, l, d) for k in FORMATS for l in LAYOUTS for d in (torch.float32, torch.float16, torch.bfloat16)
         if not k.startswith("card") or d == torch.float32]   # an image's JSON has no dtype: float32, as A1111 reads it


def make(tmp_path, kind, t):
    "A file of `kind` holding `t` (and, for SDXL, a clip_g of another layout and dtype); its path."
    g = torch.randn(2, 40).to(torch.bfloat16 if t.dtype == torch.float16 else torch.float16)
    path = tmp_path / {"diffusers_safetensors": "learned_embeds.safetensors", "diffusers_bin": "learned_embeds.bin",
                       "diffusers_tensor": "tok.bin", "a1111_pt": "tok.pt", "sdxl_safetensors": "tok.safetensors",
                       "sdxl_pt": "tok.pt", "emb_params": "tok.safetensors", "card_png": "tok.png", "card_webp": "tok.webp"}[kind]
    if kind == "diffusers_safetensors": save_file({"<tok>": t}, path)
    elif kind == "diffusers_bin": torch.save({"<tok>": t}, path)
    elif kind == "diffusers_tensor": torch.save(t, path)
    elif kind == "a1111_pt": torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": t}, "name": "tok", "step": 9}, path)
    elif kind == "sdxl_safetensors": save_file({"clip_l": t, "clip_g": g}, path, metadata={"origin": "test"})
    elif kind == "sdxl_pt": torch.save({"clip_l": t, "clip_g": g}, path)
    elif kind == "emb_params": save_file({"emb_params": t}, path, metadata={"name": "tok"})
    elif kind == "card_png": png_card(path, t, name="tok")
    else: hide(Image.new("RGB", (48, 40), (30, 60, 90)), a1111_json(t, name="tok")).save(path, lossless=True)
    return path


def raw_tensors(path, kind):
    "The tensors as the file stores them, read without dti_lens, by slot."
    if kind.startswith("card"):
        with Image.open(path) as img: data = unhide(img) if kind == "card_webp" else json.loads(base64.b64decode(img.text["sd-ti-embedding"]))
        return {None: torch.tensor(data["string_to_param"]["*"]["TORCHTENSOR"], dtype=torch.float32)}
    data = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    if kind.startswith("sdxl"): return {"text_encoder": data["clip_l"], "text_encoder_2": data["clip_g"]}
    if kind == "diffusers_tensor": return {None: data}
    return {None: data["string_to_param"]["*"] if kind == "a1111_pt" else data["emb_params"] if kind == "emb_params" else data["<tok>"]}


@pytest.mark.parametrize("kind,layout,dtype", CASES, ids=lambda x: str(x).replace("torch.", ""))
def test_write_like_keeps_each_tensors_layout_and_dtype(tmp_path, kind, layout, dtype):
    t = torch.randn(LAYOUTS[layout]).to(dtype)
    (tmp_path / "in").mkdir()
    src = make(tmp_path / "in", kind, t)
    emb = read_embeddings(src)
    before = raw_tensors(src, kind)
    room = kind not in ("diffusers_bin", "diffusers_tensor", "sdxl_pt")
    out = tmp_path / "out" / src.name
    if not room:
        with pytest.raises(ValueError, match="pass metadata=None"): write_like(emb, out, emb.vectors, metadata={"tea_beta": 1.5})
        assert not out.exists()
    write_like(emb, out, {k: 2 * r for k, r in emb.vectors.items()}, metadata={"tea_beta": 1.5} if room else None)
    after = raw_tensors(out, kind)
    assert before.keys() == after.keys()
    for k in before:
        assert (after[k].shape, after[k].dtype) == (before[k].shape, before[k].dtype), k   # each tensor its own
        assert torch.equal(after[k], 2 * before[k]), k
    back = read_embeddings(out)
    assert (back.kind, back.token, back.stored) == (emb.kind, emb.token, emb.stored)
    if room: assert back.metadata["tea_beta"] in (1.5, "1.5")
    if kind == "a1111_pt": assert torch.load(out, weights_only=True)["step"] == 9
    if kind == "sdxl_safetensors": assert back.metadata["origin"] == "test"


def test_write_like_refuses_what_the_dtype_cannot_hold_and_a_foreign_suffix(tmp_path):
    save_file({"<tok>": torch.randn(1, 32).half()}, tmp_path / "a.safetensors")
    emb = read_embeddings(tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="NaN or inf values once stored as torch.float16"):
        write_like(emb, tmp_path / "b.safetensors", {None: torch.full((1, 32), 1e5)})
    with pytest.raises(ValueError, match=r"path must end with \.safetensors"): write_like(emb, tmp_path / "b.pt", emb.vectors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


# --- folders --------------------------------------------------------------------------------------

def test_embedding_files_finds_every_embedding_and_skips_the_rest(tmp_path):
    save_embeddings(tmp_path, "<dog>", {"text_encoder": torch.randn(1, 32), "text_encoder_2": torch.randn(1, 40)})
    torch.save({"string_to_param": {"*": torch.randn(2, 32)}, "name": "a"}, tmp_path / "a.pt")
    torch.save({"<b>": torch.randn(32)}, tmp_path / "b.bin")
    save_file({"emb_params": torch.randn(1, 32)}, tmp_path / "k.safetensors")
    png_card(tmp_path / "card.png", torch.randn(1, 32))
    hide(Image.new("RGB", (48, 40), (30, 60, 90)), a1111_json(torch.randn(1, 32))).save(tmp_path / "card2.webp", lossless=True)
    shutil.copy(tmp_path / "card.png", tmp_path / "card.preview.png")                 # A1111's preview: skipped
    save_file({"w1": torch.randn(4, 4), "w2": torch.randn(4)}, tmp_path / "model.safetensors")   # a model: skipped
    torch.save({"step": 3, "params": {"text_encoder": torch.zeros(1, 32)}}, tmp_path / "checkpoint.pt")   # a checkpoint
    Image.new("RGB", (64, 64)).save(tmp_path / "sample.png")                          # a sample picture
    (tmp_path / "log.jsonl").write_text("{}\n")
    (tmp_path / "sub").mkdir(); torch.save({"<c>": torch.randn(32)}, tmp_path / "sub" / "c.bin")   # not searched
    marker = tmp_path / "pwned"
    torch.save({"string_to_param": {"*": Evil(marker)}}, tmp_path / "evil.pt")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut short")       # unreadable: skipped with a warning
    with pytest.warns(UserWarning) as warned: found = embedding_files(tmp_path)
    assert not marker.exists()
    assert len(warned) == 2 and all(any(n in str(w.message) for w in warned) for n in ("broken.png", "evil.pt"))
    assert [(f.path.name, f.kind) for f in found] == [
        ("a.pt", "a1111_pt"), ("b.bin", "diffusers"), ("card.png", "a1111_image"), ("card2.webp", "a1111_image"),
        ("dog.safetensors", "sdxl_single"), ("k.safetensors", "emb_params"), ("learned_embeds.safetensors", "diffusers"),
        ("learned_embeds_2.safetensors", "diffusers")]
    assert [list(f.vectors) for f in found][-2:] == [[None], ["text_encoder_2"]]


def test_folder_without_embeddings_says_what_it_looked_for(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "sample.png")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError) as err: embedding_files(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "*.safetensors, *.pt, *.bin, *.png, *.webp" in msg and "learned_embeds_2.safetensors" in msg
    assert "skipped: ['sample.png']" in msg
    with pytest.raises(ValueError, match="no embedding file in"): load_embeddings(tiny_pipeline("sd15"), tmp_path)


# --- TEA on files: adjust_file, against TEA written out here ---------------------------------------

def tea_oracle(v, c, alpha, beta):
    "TEA as the paper writes it, row by row in float64: rescale v and c to beta |c|, then slerp v toward c by alpha."
    v, c = v.double().reshape(-1, v.shape[-1]), c.double()
    m, out = beta * float(c.norm()), []
    for x in v:
        x_, c_ = m * x / x.norm(), m * c / c.norm()
        th = math.acos(max(-1.0, min(1.0, float(x_ @ c_) / m ** 2)))
        out.append((math.sin((1 - alpha) * th) * x_ + math.sin(alpha * th) * c_) / math.sin(th))
    return torch.stack(out)


def anchor_row(pipe, name, word="dog"):
    enc = text_encoders(pipe)[name]
    return enc.table[enc.tokenizer.convert_tokens_to_ids(f"{word}</w>")].detach()


def close_in(stored, oracle):
    "Whether `stored` is `oracle` rounded to the stored dtype (one rounding step, relative to the row's scale)."
    eps = {torch.float32: 2 ** -23, torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}[stored.dtype]
    err = (stored.double().reshape(oracle.shape) - oracle).abs()
    return bool((err <= eps * oracle.abs() + 1e-7 * float(oracle.abs().max())).all())


def test_adjust_file_sdxl_folder_every_file_each_encoder(tmp_path):
    from dti_lens.tea import adjust_file
    pipe = tiny_pipeline("sdxl")
    l, g = 8 * torch.randn(2, 32), (8 * torch.randn(2, 40)).bfloat16()   # diffusers' SDXL script: two files
    (tmp_path / "in").mkdir()
    save_file({"<cat>": l}, tmp_path / "in" / "learned_embeds.safetensors")
    save_file({"<cat>": g}, tmp_path / "in" / "learned_embeds_2.safetensors")
    used = adjust_file(tmp_path / "in", tmp_path / "out", pipe, "dog", alpha=0.3, beta=1.5)
    assert used == {"learned_embeds.safetensors:text_encoder": (0.3, 1.5), "learned_embeds_2.safetensors:text_encoder_2": (0.3, 1.5)}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["learned_embeds.safetensors", "learned_embeds_2.safetensors"]
    for name, v, enc in (("learned_embeds", l, "text_encoder"), ("learned_embeds_2", g, "text_encoder_2")):
        path = tmp_path / "out" / f"{name}.safetensors"
        out = load_file(path)["<cat>"]
        assert (out.shape, out.dtype) == (v.shape, v.dtype)
        assert close_in(out, tea_oracle(v, anchor_row(pipe, enc), 0.3, 1.5)), name
        with safe_open(path, "pt") as f: meta = f.metadata()
        assert (meta["tea_anchor"], json.loads(meta["tea_alpha"]), json.loads(meta["tea_beta"]), meta["tea_auto"]) == (
            "dog", {enc: 0.3}, {enc: 1.5}, "false")
    assert torch.equal(load_file(tmp_path / "in" / "learned_embeds.safetensors")["<cat>"], l)   # the original is untouched


def test_adjust_file_a1111_pt_with_one_fp16_vector(tmp_path):
    from dti_lens.tea import adjust_file
    pipe = tiny_pipeline("sd15")
    v = (10 * torch.randn(32)).half()
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": v}, "name": "mytoy", "step": 7}, tmp_path / "mytoy.pt")
    assert adjust_file(tmp_path / "mytoy.pt", tmp_path / "fixed.pt", pipe, "dog", alpha=0.5) == {"text_encoder": (0.5, 1.0)}
    raw = torch.load(tmp_path / "fixed.pt", weights_only=True)
    out = raw["string_to_param"]["*"]
    assert (out.shape, out.dtype) == ((32,), torch.float16)
    assert close_in(out, tea_oracle(v, anchor_row(pipe, "text_encoder"), 0.5, 1.0))
    assert (raw["name"], raw["step"], raw["string_to_token"]) == ("mytoy", 7, {"*": 265})
    assert raw["dti_lens"] == dict(tea_anchor="dog", tea_alpha={"text_encoder": 0.5}, tea_beta={"text_encoder": 1.0}, tea_auto=False)


def test_adjust_file_a1111_image(tmp_path):
    from dti_lens.tea import adjust_file
    pipe = tiny_pipeline("sd15")
    v = 6 * torch.randn(2, 32)
    png_card(tmp_path / "mycard.png", v, text=True, pixels=True)
    adjust_file(tmp_path / "mycard.png", tmp_path / "fixed.png", pipe, "dog", alpha=0.25, beta=2.0)
    with Image.open(tmp_path / "fixed.png") as img: text, pixels = json.loads(base64.b64decode(img.text["sd-ti-embedding"])), unhide(img)
    assert text == pixels                                     # both copies carry the adjusted embedding
    out = torch.tensor(text["string_to_param"]["*"]["TORCHTENSOR"], dtype=torch.float32)
    assert close_in(out, tea_oracle(v, anchor_row(pipe, "text_encoder"), 0.25, 2.0))
    assert (text["name"], text["step"], text["dti_lens"]["tea_alpha"]) == ("mycard", 500, {"text_encoder": 0.25})


def test_adjust_file_errors_come_first_and_never_contradict(tmp_path):
    from dti_lens.tea import adjust_file
    xl, sd = tiny_pipeline("sdxl"), tiny_pipeline("sd15")
    (tmp_path / "odd").mkdir()
    save_file({"<x>": torch.randn(1, 32)}, tmp_path / "odd" / "learned_embeds_2.safetensors")
    with pytest.raises(ValueError) as err: adjust_file(tmp_path / "odd", tmp_path / "o", xl, "dog")
    msg = str(err.value)
    assert "names text_encoder_2 (the file name learned_embeds_2) for its rows of width 32" in msg
    assert "the model's text_encoder_2 has width 40" in msg and "fit none" not in msg
    save_embeddings(tmp_path / "run", "<dog>", {"text_encoder": torch.randn(1, 32), "text_encoder_2": torch.randn(1, 40)})
    with pytest.raises(ValueError, match=r"names text_encoder_2 \(its key 'clip_g'\) for its rows of width 40, but the model has no"):
        adjust_file(tmp_path / "run" / "dog.safetensors", tmp_path / "d.safetensors", sd, "dog")
    with pytest.raises(ValueError, match="out is src itself"): adjust_file(tmp_path / "run", tmp_path / "run", xl, "dog")
    with pytest.raises(ValueError, match="out is src itself"): adjust_file(tmp_path / "run" / "dog.safetensors", tmp_path / "run", xl, "dog")
    with pytest.raises(ValueError, match="alpha"): adjust_file(tmp_path / "run", tmp_path / "o", xl, "dog", alpha=1.5)
    with pytest.raises(ValueError, match="src: no embedding file or folder"): adjust_file(tmp_path / "nope", tmp_path / "o", xl, "dog")
    assert not (tmp_path / "o").exists() and not (tmp_path / "d.safetensors").exists()


def test_adjust_file_auto_probes_each_encoder_once_behind_a_bar(tmp_path, monkeypatch, capsys):
    "auto_tea itself is tested in nbs/14_tea; here its plumbing: one probe per distinct (encoder, rows), a bar, metadata."
    import dti_lens.tea as tea
    calls = []
    def fake_auto(enc, rows, anchor, **kw):
        calls.append((enc.name, tuple(rows.shape)))
        return tea.AutoTea({"text_encoder": 0.15, "text_encoder_2": 0.35}[enc.name], 1.25, None, {}, 1.0, 0.05, 0.4, True)
    monkeypatch.setattr(tea, "auto_tea", fake_auto)
    pipe = tiny_pipeline("sdxl")
    save_embeddings(tmp_path / "run", "<dog>", {"text_encoder": 8 * torch.randn(2, 32), "text_encoder_2": 8 * torch.randn(2, 40)})
    torch.save({"<b>": 8 * torch.randn(32)}, tmp_path / "run" / "b.bin")            # no room for metadata: a warning
    with pytest.warns(UserWarning, match="b.bin: a diffusers or SDXL torch file has no room for metadata"):
        used = tea.adjust_file(tmp_path / "run", tmp_path / "out", pipe, "dog", auto=True, progress=True)
    assert sorted(calls) == [("text_encoder", (1, 32)), ("text_encoder", (2, 32)), ("text_encoder_2", (2, 40))]
    bar = capsys.readouterr().err
    assert "auto_tea probes" in bar and "3/3" in bar
    assert used["dog.safetensors:text_encoder_2"] == (0.35, 1.25) and used["b.bin:text_encoder"] == (0.15, 1.25)
    single = read_embeddings(tmp_path / "out" / "dog.safetensors")
    assert json.loads(single.metadata["tea_alpha"]) == {"text_encoder": 0.15, "text_encoder_2": 0.35}
    assert single.metadata["tea_auto"] == "true"
    orig = read_embeddings(tmp_path / "run" / "dog.safetensors").vectors["text_encoder_2"]
    assert close_in(single.vectors["text_encoder_2"], tea_oracle(orig, anchor_row(pipe, "text_encoder_2"), 0.35, 1.25))

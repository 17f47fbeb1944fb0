"""The lenses and TEA on the Wan2.1 (UMT5) and Flux (CLIP pooled + T5 sequence) families, each checked against an
oracle written out here: residual angles from the model's own float64 hidden states, TEA's formula (TEA paper,
Sec. 4: rescale to beta |c|, slerp by alpha) in float64, and the pipeline's own `encode_prompt` for conditioning.
Cheap checks run on every family of `BUILDERS`; `interpolate`'s images are checked in tests/test_invariants.py."""
import copy, math

import pytest, torch
from dti_lens.zoo import BUILDERS, tiny_pipeline
from dti_lens.encoders import text_encoders, add_placeholder, placeholder_tokens
from dti_lens.pipelines import adapter
from dti_lens.diagnose import diagnose, REFERENCE_PROMPTS
from dti_lens.probe import position_probe
from dti_lens.residual import residual_angles
from dti_lens.tea import adjust_tokens, prompt_embeds_tea
from dti_lens.interpolate import interpolation_conditioning

NEW = ["wan", "flux"]
ALL = sorted(BUILDERS)


def _pipe_with_token(kind, n=1, scale=3.0, token="<v>", seed=7):
    """A tiny pipeline whose encoders know `token` (n vectors): random directions at `scale` x the mean row norm, as a drifted TI vector
    (seed 7: the zoo draws its own rows from seed 0, so seed 0 would copy its first row)."""
    pipe, g = tiny_pipeline(kind), torch.Generator().manual_seed(seed)
    for e in text_encoders(pipe).values():
        m = e.table[:e.n_original].detach().norm(dim=1).mean()
        rows = torch.nn.functional.normalize(torch.randn(n, e.width, generator=g), dim=1) * scale * m
        add_placeholder(e, placeholder_tokens(token, n), rows)
    return pipe


def _dog(e):
    "The row of 'dog' as one piece inside a prompt, read straight from the vocabulary (not through `word_pieces`)."
    piece = "dog</w>" if "CLIP" in type(e.model).__name__ else "▁dog"  # CLIP's BPE; T5, UMT5 and Gemma's ▁ word starts
    return e.table[e.tokenizer.convert_tokens_to_ids(piece)].detach().double()


def tea_formula(v, c, alpha, beta):
    "TEA in float64 as the paper writes it: v~ = beta|c| v/|v|, c~ = beta|c| c/|c|, then slerp(v~, c~; alpha)."
    v, c = v.double(), c.double().expand_as(v)
    m = beta * c.norm(dim=-1, keepdim=True)
    vh, ch = v / v.norm(dim=-1, keepdim=True), c / c.norm(dim=-1, keepdim=True)
    theta = torch.arccos((vh * ch).sum(-1, keepdim=True).clamp(-1, 1))
    return m * (torch.sin((1 - alpha) * theta) * vh + torch.sin(alpha * theta) * ch) / torch.sin(theta)


def block_angles_f64(model, tokenizer, prompt, word_piece, vector):
    """Degrees turned by each block at `word_piece`'s position with `vector` as its input row, from a float64 copy's own
    `output_hidden_states` (final norm removed, so the last entry is the last block's output)."""
    m = copy.deepcopy(model).double().eval()
    m.encoder.final_layer_norm = torch.nn.Identity()
    ids = tokenizer(prompt).input_ids
    pos = ids.index(tokenizer.convert_tokens_to_ids(word_piece))
    x = m.get_input_embeddings().weight[ids].detach().clone()
    x[pos] = vector.double()
    with torch.no_grad(): hs = m(inputs_embeds=x[None], output_hidden_states=True).hidden_states
    a, b = torch.stack(hs[:-1])[:, 0, pos], torch.stack(hs[1:])[:, 0, pos]
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))


# 1. diagnose: T5/UMT5 skip the probe and trace residual angles (checked in float64); Flux's CLIP runs the probe

@pytest.mark.parametrize("kind,name", [("wan", "text_encoder"), ("flux", "text_encoder_2")])
def test_diagnose_on_t5_skips_the_probe_and_its_angles_match_float64_hidden_states(kind, name):
    e = text_encoders(_pipe_with_token(kind))[name]
    v = e.table[-1].detach().clone()
    d = diagnose(v, e.model, e.tokenizer, words=("dog", "cat"))
    assert d.probe is None and d.position is None and d.chance is None
    assert "position probe: not applicable" in d.summary()
    assert d.verdict.endswith("--auto needs absolute positions)"), d.verdict  # auto_tea would need the probe
    assert "<v>" not in [t for t, _ in d.neighbours["cosine"]]  # its own (added) row is never a neighbour
    want = torch.stack([block_angles_f64(e.model, e.tokenizer, p.format("dog"), "▁dog", v) for p in REFERENCE_PROMPTS]).mean(0)
    assert len(d.angles["learned"]) == len(e.model.encoder.block)
    torch.testing.assert_close(torch.tensor(d.angles["learned"], dtype=torch.float64), want, rtol=0, atol=1e-4)


def test_diagnose_on_flux_clip_runs_the_position_probe():
    e = text_encoders(_pipe_with_token("flux"))["text_encoder"]
    d = diagnose(e.table[-1].detach(), e.model, e.tokenizer, words=("dog", "cat"), probe_kw=dict(steps=20, n_tokens=64))
    assert d.probe is not None and d.probe.kind == "clip" and d.chance == pytest.approx(1 / 77)
    assert 0 <= d.position <= 1 and len(d.angles["learned"]) == 3
    assert "position recoverable after the first norm" in d.summary()
    assert d.verdict.endswith("(try TEA: `dti-lens adjust --auto`)"), d.verdict


# 2. the position probe refuses encoders without absolute positions, naming the encoder and why

@pytest.mark.parametrize("kind,name,why", [("wan", "text_encoder", "UMT5EncoderModel has none: T5 encodes position as a learned relative bias"),
                                           ("flux", "text_encoder_2", "T5EncoderModel has none: T5 encodes position as a learned relative bias"),
                                           ("sana", "text_encoder", "Gemma2Model has none: Gemma-2 .*RoPE")])
def test_position_probe_refuses_encoders_without_absolute_positions(kind, name, why):
    e = text_encoders(tiny_pipeline(kind))[name]
    with pytest.raises(ValueError, match=f"needs an additive absolute position table and {why}"):
        position_probe(e.model, e.tokenizer, steps=1)


# 3. token-level TEA: the rows written are the paper's formula, and undo puts the originals back bit for bit

@pytest.mark.parametrize("kind", ALL)
def test_adjust_tokens_writes_the_tea_formula_and_undoes_exactly(kind):
    pipe = _pipe_with_token(kind, n=2)
    encs = text_encoders(pipe)
    ids = {k: e.tokenizer.convert_tokens_to_ids(["<v>", "<v>_1"]) for k, e in encs.items()}
    before = {k: e.table[ids[k]].detach().clone() for k, e in encs.items()}
    edit = adjust_tokens(pipe, "<v>", "dog", alpha=0.3, beta=1.5)
    for k, e in encs.items():
        want = tea_formula(before[k], _dog(e), 0.3, 1.5)
        torch.testing.assert_close(e.table[ids[k]].detach().double(), want, rtol=1e-6, atol=1e-6, msg=f"{kind}/{k}")
    edit.undo()
    for k, e in encs.items(): assert torch.equal(e.table[ids[k]], before[k]), (kind, k)


# 4. prompt-level TEA: the pipeline's own conditioning where nothing is adjusted, the formula where something is

def _plain(pipe, prompt, n=1, token="<v>"):
    "The pipeline's own `encode_prompt` conditioning of `prompt`, as call arguments."
    fam = adapter(pipe)
    with torch.no_grad(): return fam.call_kwargs(fam.encode_prompt([fam.pipeline_prompt(prompt, token, n)]))


@pytest.mark.parametrize("kind", NEW)
def test_prompt_tea_keeps_untouched_positions_and_adjusts_the_token_by_the_formula(kind):
    pipe, prompt = _pipe_with_token(kind, n=2), "a photo of a <v> on the beach"  # two vectors, a one-piece anchor
    v, c = _plain(pipe, prompt, n=2), _plain(pipe, prompt.replace("<v>", "dog"))
    out = prompt_embeds_tea(pipe, prompt, "<v>", "dog", alpha=0.3, beta=1.5, positions="placeholder")
    assert {k: x.shape for k, x in out.items()} == {k: x.shape for k, x in v.items()}
    L = out["prompt_embeds"].shape[1]
    assert L == 512 and out["prompt_embeds"].shape[2] == text_encoders(pipe)[adapter(pipe).sequence[0]].width
    tok = text_encoders(pipe)[adapter(pipe).sequence[0]].tokenizer
    s = tok("a photo of a <v> <v>_1 on the beach").input_ids.index(tok.convert_tokens_to_ids("<v>"))
    keep = (torch.arange(L) < s) | (torch.arange(L) >= s + 2)
    torch.testing.assert_close(out["prompt_embeds"][:, keep], v["prompt_embeds"][:, keep], rtol=0, atol=0)
    for k in set(v) - {"prompt_embeds"}: torch.testing.assert_close(out[k], v[k], rtol=0, atol=0)  # Flux's pooled CLIP
    want = tea_formula(v["prompt_embeds"][0, s:s + 2], c["prompt_embeds"][0, s], 0.3, 1.5)  # both vectors pair with "dog"
    torch.testing.assert_close(out["prompt_embeds"][0, s:s + 2].double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", NEW)
def test_prompt_tea_at_alpha_0_only_rescales_and_at_alpha_1_gives_the_anchor_prompt(kind):
    pipe, prompt = _pipe_with_token(kind), "a photo of a <v> on the beach"
    v, c = _plain(pipe, prompt), _plain(pipe, prompt.replace("<v>", "dog"))
    x, cn = v["prompt_embeds"], c["prompt_embeds"].norm(dim=-1, keepdim=True)
    real = x.norm(dim=-1) > 0  # Wan zeroes the states past the prompt; TEA keeps zero rows
    torch.testing.assert_close(x.norm(dim=-1)[real], cn[..., 0][real])  # the tiny T5's final RMS norm (unit weights): sqrt(d) each
    same = prompt_embeds_tea(pipe, prompt, "<v>", "dog", alpha=0, beta=1)  # so rescaling to beta |c_i| = |v_i| keeps v
    for k in v: torch.testing.assert_close(same[k], v[k], msg=k)
    double = prompt_embeds_tea(pipe, prompt, "<v>", "dog", alpha=0, beta=2)["prompt_embeds"]
    torch.testing.assert_close(double[real], (2 * cn * torch.nn.functional.normalize(x, dim=-1))[real])
    anchor = prompt_embeds_tea(pipe, prompt, "<v>", "dog", alpha=1, beta=1, pooled=kind == "flux")
    for k in anchor: torch.testing.assert_close(anchor[k], c[k], rtol=1e-5, atol=1e-5, msg=k)


# 5. interpolation: the path's ends are the encodings with emb_a and emb_b loaded

@pytest.mark.parametrize("kind", ALL)
def test_interpolation_ends_are_the_encodings_of_either_embedding(kind):
    pipe, g = tiny_pipeline(kind), torch.Generator().manual_seed(0)
    encs = text_encoders(pipe)
    emb = [{k: torch.randn(2, e.width, generator=g) for k, e in encs.items()} for _ in range(2)]
    path = interpolation_conditioning(pipe, *emb, ts=(0, 0.5, 1), prompt="a photo of a {} on the beach", token="<mix>")
    for t, rows in ((0, emb[0]), (2, emb[1])):
        loaded = copy.deepcopy(pipe)
        for k, e in text_encoders(loaded).items(): add_placeholder(e, ["<mix>", "<mix>_1"], rows[k])
        want = _plain(loaded, "a photo of a <mix> on the beach", n=2, token="<mix>")
        for k in want: torch.testing.assert_close(path[k][t:t + 1], want[k], rtol=1e-5, atol=1e-5, msg=f"{kind} t={t} {k}")
    assert not torch.allclose(path["prompt_embeds"][1], path["prompt_embeds"][0])  # the middle is neither end


# 6. Lemma 2 on T5/UMT5: the residual tracer's check across scales reports a measured exponent

@pytest.mark.parametrize("kind,name", [("wan", "text_encoder"), ("flux", "text_encoder_2")])
def test_lemma2_check_runs_on_t5(kind, name):
    e = text_encoders(tiny_pipeline(kind))[name]
    r = residual_angles(e.model, e.tokenizer, "a photo of a dog", "dog", scales=(1, 4, 16))
    L = r.lemma2
    assert r.kind == "t5" and r.pre_norm and L.tested and L.growth >= 4
    assert math.isfinite(L.exponent) and 0 <= L.within <= 1
    assert "exponent p =" in repr(L)


@pytest.mark.parametrize("kind", NEW)
def test_auto_tea_refuses_encoders_without_absolute_positions_before_any_probe(kind, tmp_path, monkeypatch):
    "auto picks alpha with the position probe: T5/UMT5 (no absolute positions) are refused by name, before any probe runs."
    import dti_lens.tea as tea
    from dti_lens.embeddings import save_embeddings
    pipe = _pipe_with_token(kind)
    encs = text_encoders(pipe)
    rows = {k: e.table[-1:].detach().clone() for k, e in encs.items()}
    save_embeddings(tmp_path, "<w>", rows, single_file=False)
    probed = []
    monkeypatch.setattr(tea, "position_probe", lambda *a, **kw: probed.append(1) / 0)
    t5 = "text_encoder" if kind == "wan" else "text_encoder_2"
    with pytest.raises(ValueError, match=f"{t5} \\((U?MT5|T5)EncoderModel\\) cannot take: it has no absolute positions"):
        tea.adjust_file(tmp_path, tmp_path / "out", pipe, "dog", auto=True)
    assert not probed and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="no absolute positions"): tea.auto_tea(encs[t5], rows[t5], "dog")
    assert not probed


def test_the_diagnosis_page_of_a_t5_token_renders_without_a_probe(tmp_path):
    "`dti-lens diagnose FILE --html` on a Wan (UMT5) file: no probe, and the page still renders the residual angles."
    from dti_lens.cli import diagnose_file, diagnosis_page
    from dti_lens.embeddings import save_embeddings
    e = text_encoders(_pipe_with_token("wan"))["text_encoder"]
    save_embeddings(tmp_path, "<w>", {"text_encoder": e.table[-1:].detach().clone()})
    found = diagnose_file(tmp_path, tiny_pipeline("wan"))
    page = diagnosis_page(found, str(tmp_path / "learned_embeds.safetensors"))
    assert [d.probe for _, d in found] == [None] and page.lower().startswith("<!doctype html>") and "plotly-graph-div" in page

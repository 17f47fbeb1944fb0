"""Invariants every pipeline family of the zoo must keep (a family added to `BUILDERS` inherits them).

- sampling (validation images, interpolation rows) conditions the denoiser exactly as training encodes the prompt;
- every method trains on every family;
- the loss target follows the scheduler's prediction type, and an unknown type is refused before any model work;
- gradient accumulation steps on the mean of the micro-batch gradients.
(Training view = inference view at the first block of every encoder: nbs/13_train.ipynb, over `BUILDERS` too.)
"""
import copy
import pytest, torch
from dti_lens.zoo import BUILDERS, tiny_pipeline
from dti_lens.data import synthetic_subject
from dti_lens.encoders import expand_placeholder, learned_rows
from dti_lens.pipelines import adapter
from dti_lens.train import (METHODS, TrainConfig, train_dti, sample_images, fill_defaults, check_words, _prepare,
                            _micro_loss, _step)
from dti_lens.interpolate import interpolate

SUBJECT = synthetic_subject(4, 64)
KINDS = sorted(BUILDERS)
FAST = dict(batch_size=1, grad_accum=1, resolution=64, progress=False)


def _denoiser(pipe): return adapter(pipe).denoiser


def _conditioning_seen(pipe, call, batch:int) -> dict:
    "The text conditioning of the denoiser's first call in `call()`: its last `batch` rows (guidance may prepend negatives)."
    seen = {}
    def record(mod, args, kwargs):
        if seen: return
        seen.update({k: v for k, v in kwargs.items() if k in ("encoder_hidden_states", "encoder_attention_mask",
                                                               "pooled_projections")})
        if kwargs.get("added_cond_kwargs"): seen["text_embeds"] = kwargs["added_cond_kwargs"]["text_embeds"]
    h = _denoiser(pipe).register_forward_pre_hook(record, with_kwargs=True)
    try: call()
    finally: h.remove()
    return {k: v[-batch:] for k, v in seen.items()}


def _trained(kind, init="teddybear"):
    "A tiny pipeline that knows <disc>, learned from a multi-piece init (several vectors)."
    pipe = tiny_pipeline(kind)
    r = train_dti(pipe, SUBJECT, "<disc>", init, steps=1, **FAST)
    return pipe, r


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_uses_the_training_conditioning(kind):
    pipe, r = _trained(kind)
    n = len(next(iter(r.tokens.values())))
    assert n > 1
    prompts = ["a photo of a <disc>", "a <disc> on the beach"]
    seen = _conditioning_seen(pipe, lambda: sample_images(pipe, prompts, "<disc>", n, 64, steps=1), len(prompts))
    fam = adapter(pipe)
    with torch.no_grad(): want = fam.encode(fam.tokenize([expand_placeholder(p, "<disc>", n) for p in prompts]))
    assert set(want) <= set(seen), (set(want), set(seen))
    for k, v in want.items(): torch.testing.assert_close(seen[k], v, rtol=0, atol=1e-6, msg=f"{kind}: {k}")


@pytest.mark.parametrize("kind", KINDS)
def test_interpolation_uses_the_training_conditioning(kind):
    pipe, r = _trained(kind)
    n = len(next(iter(r.tokens.values())))
    other = {k: torch.roll(v, 1, dims=-1) for k, v in r.embeddings.items()}
    seen = _conditioning_seen(pipe, lambda: interpolate(pipe, r.embeddings, other, ts=(0,), steps=1, prompt="a photo of a {}",
                                                        resolution=64), 1)
    fam = adapter(pipe)
    with torch.no_grad(): want = fam.encode(fam.tokenize([expand_placeholder("a photo of a <disc>", "<disc>", n)]))
    for k, v in want.items(): torch.testing.assert_close(seen[k], v, rtol=0, atol=1e-5, msg=f"{kind}: {k}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_every_family(kind, method):
    r = train_dti(tiny_pipeline(kind), SUBJECT, "<disc>", "toy", method=method, steps=2, batch_size=1, resolution=64,
                  progress=False)
    assert len(r.log) == 2 and all(rec.get("loss") is not None for rec in r.log)
    for name, e in r.embeddings.items():
        assert torch.isfinite(e).all() and (e.norm(dim=1) > 0).all(), (kind, method, name)


def test_sample_prediction_is_trained_on_x0_and_unknown_types_are_refused():
    pipe = tiny_pipeline("sd15")
    pipe.scheduler.register_to_config(prediction_type="sample")
    targets = []
    import dti_lens.pipelines as P
    real = P.loss_target
    P.loss_target = lambda sched, latents, noise, t: targets.append((latents, real(sched, latents, noise, t))) or targets[-1][1]
    try: train_dti(pipe, SUBJECT, "<disc>", "toy", steps=1, **FAST)
    finally: P.loss_target = real
    assert targets and all(torch.equal(x0, target) for x0, target in targets)   # x0, not noise, not v
    bad = tiny_pipeline("sd15")
    bad.scheduler.register_to_config(prediction_type="flow_x")
    encodes = []
    bad.vae.encode = lambda *a, **k: encodes.append(1)
    with pytest.raises(ValueError, match="prediction_type must be one of .*'epsilon', 'v_prediction', 'sample'.*got 'flow_x'"):
        train_dti(bad, SUBJECT, "<disc>", "toy", steps=1, **FAST)
    assert not encodes  # refused before the VAE ran


@pytest.mark.parametrize("method", ["dti", "ti"])
def test_gradient_accumulation_steps_on_the_mean_gradient(method):
    pipe = tiny_pipeline("sd15")
    c = fill_defaults(TrainConfig("<disc>", "toy", method=method, batch_size=1, grad_accum=3), pipe)
    from dti_lens.data import pixel_batch
    run = _prepare(pipe, c, check_words(adapter(pipe), c), pixel_batch(SUBJECT, c.resolution), [], None, "no")
    slot = next(iter(run.slots.values()))
    state, order, seen = run.gen.get_state(), list(run.sampler.order), []
    step = run.opt.step
    run.opt.step = lambda *a, **k: seen.append(slot.param.grad.clone()) or step(*a, **k)
    with learned_rows(slot.enc, slot.ids, slot.embedding):
        grads = [torch.autograd.grad(_micro_loss(run), slot.param)[0] for _ in range(c.grad_accum)]  # one by one
        run.gen.set_state(state); run.sampler.order = order        # the same micro-batches again, accumulated
        _step(run)
    torch.testing.assert_close(seen[0], torch.stack(grads).mean(0), rtol=1e-5, atol=1e-8)
    assert not torch.allclose(grads[0], grads[1])  # the micro-batches differ, so the mean is a real average

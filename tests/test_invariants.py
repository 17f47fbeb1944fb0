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
from dti_lens.encoders import encode, prompt_batch, expand_placeholder, family, learned_rows
from dti_lens.train import (METHODS, TrainConfig, train_dti, sample_images, fill_defaults, check_words, _prepare,
                            make_optimizer, _micro_loss, _step)
from dti_lens.interpolate import interpolate

SUBJECT = synthetic_subject(4, 64)
KINDS = sorted(BUILDERS)
FAST = dict(batch_size=1, grad_accum=1, progress=False)


def _denoiser(pipe): return pipe.transformer if family(pipe) == "sana" else pipe.unet


def _conditioning_seen(pipe, call) -> dict:
    "The text conditioning of the denoiser's first call inside `call()`, positive half when guidance doubles the batch."
    seen = {}
    def record(mod, args, kwargs):
        if seen: return
        seen.update(encoder_hidden_states=kwargs["encoder_hidden_states"], n=len(args[0] if args else kwargs["hidden_states"]))
        if "encoder_attention_mask" in kwargs: seen["encoder_attention_mask"] = kwargs["encoder_attention_mask"]
        if kwargs.get("added_cond_kwargs"): seen["text_embeds"] = kwargs["added_cond_kwargs"]["text_embeds"]
    h = _denoiser(pipe).register_forward_pre_hook(record, with_kwargs=True)
    try: call()
    finally: h.remove()
    n = seen.pop("n")
    return {k: v[-n // 2:] if len(v) == n and n % 2 == 0 else v for k, v in seen.items()}  # CFG: [negative, positive]


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
    seen = _conditioning_seen(pipe, lambda: sample_images(pipe, prompts, "<disc>", n, 64, steps=1))
    with torch.no_grad(): want = encode(pipe, prompt_batch(pipe, [expand_placeholder(p, "<disc>", n) for p in prompts]))
    assert set(want) <= set(seen), (set(want), set(seen))
    for k, v in want.items(): torch.testing.assert_close(seen[k], v, rtol=0, atol=1e-6, msg=f"{kind}: {k}")


@pytest.mark.parametrize("kind", KINDS)
def test_interpolation_uses_the_training_conditioning(kind):
    pipe, r = _trained(kind)
    n = len(next(iter(r.tokens.values())))
    other = {k: torch.roll(v, 1, dims=-1) for k, v in r.embeddings.items()}
    seen = _conditioning_seen(pipe, lambda: interpolate(pipe, r.embeddings, other, ts=(0,), steps=1, prompt="a photo of a {}"))
    with torch.no_grad(): want = encode(pipe, prompt_batch(pipe, [expand_placeholder("a photo of a <disc>", "<disc>", n)]))
    for k, v in want.items(): torch.testing.assert_close(seen[k], v, rtol=0, atol=1e-5, msg=f"{kind}: {k}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_every_family(kind, method):
    r = train_dti(tiny_pipeline(kind), SUBJECT, "<disc>", "toy", method=method, steps=2, batch_size=1, progress=False)
    assert len(r.log) == 2 and all(rec.get("loss") is not None for rec in r.log)
    for name, e in r.embeddings.items():
        assert torch.isfinite(e).all() and (e.norm(dim=1) > 0).all(), (kind, method, name)


def test_sample_prediction_is_trained_on_x0_and_unknown_types_are_refused():
    pipe = tiny_pipeline("sd15")
    pipe.scheduler.register_to_config(prediction_type="sample")
    targets = []
    import dti_lens.train as T
    real = T.loss_target
    T.loss_target = lambda sched, latents, noise, t: targets.append((latents, real(sched, latents, noise, t))) or targets[-1][1]
    try: train_dti(pipe, SUBJECT, "<disc>", "toy", steps=1, **FAST)
    finally: T.loss_target = real
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
    slots, data = _prepare(pipe, c, check_words(pipe, c), pixel_batch(SUBJECT, c.resolution))
    slot = next(iter(slots.values()))
    state, order = data["gen"].get_state(), list(data["sampler"].order)
    opt, seen = make_optimizer(slots, c), []
    step = opt.step
    opt.step = lambda *a, **k: seen.append(slot.param.grad.clone()) or step(*a, **k)
    with learned_rows(slot.enc, slot.ids, slot.embedding):
        grads = [torch.autograd.grad(_micro_loss(pipe, slots, c, data, data["gen"], "no"), slot.param)[0]
                 for _ in range(c.grad_accum)]                 # the same micro-batches, one by one
        data["gen"].set_state(state); data["sampler"].order = order
        _step(pipe, slots, c, data, opt, data["gen"], 0, "no")
    torch.testing.assert_close(seen[0], torch.stack(grads).mean(0), rtol=1e-5, atol=1e-8)
    assert not torch.allclose(grads[0], grads[1])  # the micro-batches differ, so the mean is a real average

"""Training speed: dti_lens.train_dti against a diffusers-script-style TI loop, on the same SDXL pipeline, in one run.

Usage:
  .venv/bin/python benchmarks/train_step.py                       # tiny SDXL (dti_lens.zoo) on the CPU, a few minutes
  .venv/bin/python benchmarks/train_step.py --full --device cuda  # full-size SDXL, random weights, 768 px, batch 4, bf16
  .venv/bin/python benchmarks/train_step.py --full --dry          # full-size models on the meta device: parameter counts, FLOPs

The baseline (`ScriptTI`) re-implements the training step of diffusers' examples/textual_inversion/textual_inversion_sdxl.py
as described (not copied): the placeholder added to both tokenizers, both token tables resized and trained whole by one
AdamW (lr 5e-3, weight decay 1e-2), every other row copied back after each step, per-step PIL preprocessing and
tokenisation, and a VAE encode of the batch at every step. Ours is `train_dti(method="dti")` and its TI baseline
`method="ti"`, which share our fast path (latents encoded once, only the placeholder rows are parameters).
Same pipeline (fresh per run), images (in memory for both: the script's re-opening of every file each step is left
out), batch size 4, resolution, templates, placeholder and init word. (diffusers' current SDXL script trains only
text_encoder's table; the baseline trains both, as we do.)

Measured:
- time per optimisation step = (T(long) - T(short)) / (long - short) on fresh pipelines, so set-up cancels;
  median over --repeats, the runs interleaved so the machine's noise hits every method alike;
- wall time of a whole --job-steps job, pipeline load and set-up included;
- the VAE encode of one batch alone, as a share of the baseline step (the part we take away);
- where one step's time goes (forward hooks, gradient hooks and optimizer hooks; CPU wall clock);
- model FLOPs per step (torch.utils.flop_counter), and with --full on CUDA: steps/s, peak memory and the share of
  the GPU's measured bf16 matmul rate.
"""
import argparse, gc, math, platform, statistics, time
from collections import defaultdict
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.flop_counter import FlopCounterMode

import dti_lens.train as T
from dti_lens.data import TEMPLATES, center_crop_box, synthetic_subject, to_pixels
from dti_lens.encoders import encode, tokenize, text_encoders
from dti_lens.zoo import clip_tokenizer, tiny_pipeline

TOKEN, INIT, BATCH = "<disc>", "toy", 4
METHODS = ("baseline", "dti", "ti")


# ---------------------------------------------------------------------------------------------- the baseline
def autocast(device, bf16):
    "bf16 autocast on `device`, or nothing."
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()


class ScriptTI:
    "diffusers' textual_inversion_sdxl.py training step, re-implemented: whole token tables under AdamW, then restored."
    def __init__(self, pipe, images, resolution, token=TOKEN, init=INIT, lr=5e-3, weight_decay=1e-2, seed=42,
                 templates=TEMPLATES, bf16=False):
        self.pipe, self.images, self.res, self.token, self.templates, self.bf16 = pipe, images, resolution, token, templates, bf16
        self.gen = torch.Generator().manual_seed(seed)
        self.encs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        self.ids = [self._add_token(tok, te, token, init) for tok, te in self.encs]
        pipe.vae.requires_grad_(False); pipe.unet.requires_grad_(False)
        self.device, self.unet_dtype, self.vae_dtype = pipe.device, pipe.unet.dtype, pipe.vae.dtype  # the script's fixed
        # accelerator.device and weight_dtype (diffusers' pipe.device and model.dtype walk every submodule per call)
        self.tables = [self._trainable_table(te) for _, te in self.encs]
        self.orig = [w.detach().clone() for w in self.tables]
        self.opt = torch.optim.AdamW(self.tables, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda _: 1.0)  # the script's "constant"
        from diffusers import DDPMScheduler
        self.sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.order = []  # the DataLoader's shuffled epochs
        self.mark = lambda label: None  # profiling hook (see `profile_steps`)

    @staticmethod
    def _add_token(tok, te, token, init):
        tok.add_tokens([token])
        init_id, = tok.encode(init, add_special_tokens=False)  # the script requires a one-piece init word
        te.resize_token_embeddings(len(tok), mean_resizing=False)  # the new row is overwritten next
        new_id = tok.convert_tokens_to_ids(token)
        with torch.no_grad(): te.get_input_embeddings().weight[new_id] = te.get_input_embeddings().weight[init_id]
        return new_id

    def _trainable_table(self, te):
        "The whole token table trainable, the rest frozen; fp32 under bf16 autocast (the script keeps trained models fp32)."
        if self.bf16: te.float()
        te.requires_grad_(False).train()
        w = te.get_input_embeddings().weight
        return w.requires_grad_(True)

    def batch(self):
        "The DataLoader's batch: per image resize + centre crop + random flip (PIL), per prompt both tokenizers."
        while len(self.order) < BATCH: self.order += torch.randperm(len(self.images), generator=self.gen).tolist()
        idx, self.order = self.order[:BATCH], self.order[BATCH:]
        ims = [self.images[i] for i in idx]
        px = torch.stack([to_pixels(im, self.res, flip=bool(torch.rand((), generator=self.gen) < 0.5)) for im in ims])
        texts = [self.templates[torch.randint(len(self.templates), (), generator=self.gen)].format(self.token) for _ in ims]
        ids = [torch.cat([tok(t, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
                          for t in texts]) for tok, _ in self.encs]
        time_ids = torch.tensor([[im.height, im.width, *center_crop_box((im.height, im.width), self.res)[1], self.res, self.res]
                                 for im in ims], dtype=torch.float32)
        return px, ids, time_ids

    def loss(self):
        "The step's loss, VAE encode included."
        px, ids, time_ids = self.batch(); self.mark("data (PIL, tokenize)")
        dev, dtype, unet, vae = self.device, self.unet_dtype, self.pipe.unet, self.pipe.vae
        with autocast(dev, self.bf16):
            latents = vae.encode(px.to(dev, self.vae_dtype)).latent_dist.sample() * vae.config.scaling_factor; self.mark("VAE encode")
            noise = torch.randn_like(latents)
            t = torch.randint(0, self.sched.config.num_train_timesteps, (len(latents),), device=dev)
            noisy = self.sched.add_noise(latents, noise, t).to(dtype)
            outs = [te(i.to(dev), output_hidden_states=True) for (_, te), i in zip(self.encs, ids)]
            ehs = torch.cat([o.hidden_states[-2] for o in outs], dim=-1).to(dtype)
            cond = dict(text_embeds=outs[1][0], time_ids=time_ids.to(dev, dtype))
            pred = unet(noisy, t, ehs, added_cond_kwargs=cond).sample
            target = noise if self.sched.config.prediction_type == "epsilon" else self.sched.get_velocity(latents, noise, t)
            return F.mse_loss(pred.float(), target.float())

    def step(self) -> float:
        loss = self.loss()
        loss.backward()
        self.opt.step(); self.lr_sched.step(); self.opt.zero_grad()
        self.restore(); self.mark("restore")
        return loss.detach().item()

    @torch.no_grad()
    def restore(self):
        "Copy back every row but the placeholder's, on both tables."
        for w, orig, i in zip(self.tables, self.orig, self.ids):
            keep = torch.ones(len(w), dtype=torch.bool); keep[i] = False
            w[keep] = orig[keep]


# ---------------------------------------------------------------------------------------------- pipelines
def tiny_sdxl(device="cpu"):
    return tiny_pipeline("sdxl").to(device)


def full_configs(vocab1=49408, vocab2=49408, special=dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=1)):
    "SDXL base's architecture: UNet, CLIP-L, OpenCLIP-bigG with projection, VAE (keyword arguments; `special`: token ids)."
    unet = dict(sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), addition_embed_type="text_time",
                addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, use_linear_projection=True)
    clip_l = dict(vocab_size=vocab1, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, **special)
    big_g = dict(vocab_size=vocab2, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                 max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, **special)
    vae = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
               sample_size=1024, scaling_factor=0.13025)
    return unet, clip_l, big_g, vae


def full_models(device, *config, dtype=torch.bfloat16):
    "Full-size SDXL models with random weights, built directly on `device` (meta: no memory); `config`: `full_configs`'s."
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    u, l, g, v = full_configs(*config)
    with torch.device(device):
        models = dict(unet=UNet2DConditionModel(**u), text_encoder=CLIPTextModel(CLIPTextConfig(**l)),
                      text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**g)), vae=AutoencoderKL(**v))
    return {k: m.to(dtype).eval() for k, m in models.items()}


def full_sdxl(device="cuda"):
    "The full-size SDXL architecture (random weights, bf16) with the zoo's tiny tokenizers: token tables sized to them."
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    tok, tok2 = clip_tokenizer(), clip_tokenizer(pad_token="!")
    special = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    m = full_models(device, len(tok), len(tok2), special)  # same vocabulary and BOS/EOS ids (CLIP ignores the pad id)
    sched = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                   timestep_spacing="leading")
    return StableDiffusionXLPipeline(tokenizer=tok, tokenizer_2=tok2, scheduler=sched, **m)


# ---------------------------------------------------------------------------------------------- runs
def cpu_name():
    return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())


def sync(device):
    if torch.device(device).type == "cuda": torch.cuda.synchronize()


def fresh_pipe(args):
    "A new pipeline of the run's kind (the previous one's GPU memory freed first)."
    if args.cuda: gc.collect(); torch.cuda.empty_cache()
    return args.make_pipe(args.device)


def timing(times):
    "A `patched` maker that appends each call's wall time to `times`."
    def make(f):
        def wrapped(*a, **kw):
            t0 = time.perf_counter(); out = f(*a, **kw); times.append(time.perf_counter() - t0); return out
        return wrapped
    return make


def run(method, steps, args, images, step_times=None):
    "One run on a fresh pipeline: (seconds to build/load it, seconds to train `steps` steps); each step's time to `step_times`."
    step_times = [] if step_times is None else step_times
    t0 = time.perf_counter()
    pipe = fresh_pipe(args); sync(args.device)
    t1 = time.perf_counter()
    if method == "baseline":
        trainer = ScriptTI(pipe, images, args.resolution, bf16=args.bf16)
        bad = sum(not math.isfinite(timing(step_times)(trainer.step)()) for _ in range(steps))
    else:
        with patched(T, "_step", timing(step_times)):
            bad = T.train_dti(pipe, images, TOKEN, INIT, method=method, steps=steps, batch_size=BATCH, resolution=args.resolution,
                              progress=False, mixed_precision="bf16" if args.bf16 else "no").nan_steps
    sync(args.device)
    t2 = time.perf_counter()
    if bad: print(f"  WARNING: {method}: {bad} of {steps} losses not finite (train_dti skips their backward): times not comparable")
    return t1 - t0, t2 - t1


def per_step_times(args, images):
    "Per method: the per-step time of each repeat, every single step's time of the long runs, their peak memory (CUDA)."
    out, single, peak = defaultdict(list), defaultdict(list), defaultdict(int)
    for r in range(args.repeats):
        for method in METHODS[r % 3:] + METHODS[:r % 3]:  # rotate the order between repeats
            _, t_short = run(method, args.short, args, images)
            if args.cuda: torch.cuda.reset_peak_memory_stats()
            _, t_long = run(method, args.long, args, images, single[method])
            if args.cuda: peak[method] = max(peak[method], torch.cuda.max_memory_allocated())
            out[method].append((t_long - t_short) / (args.long - args.short))
            print(f"  repeat {r + 1}, {method}: {args.short} steps {t_short:.2f} s, {args.long} steps {t_long:.2f} s "
                  f"-> {out[method][-1] * 1e3:.1f} ms/step", flush=True)
    return out, single, peak


def job_times(args, images):
    "Wall time of a whole job per method: pipeline load, set-up and --job-steps steps."
    return {m: sum(run(m, args.job_steps, args, images)) for m in METHODS} if args.job_steps else {}


def vae_encode_time(args, repeat=50):
    "Median time of the baseline's per-step VAE encode of one batch."
    pipe = fresh_pipe(args)
    px = torch.randn(BATCH, 3, args.resolution, args.resolution, device=args.device, dtype=pipe.vae.dtype)
    times = []
    with torch.no_grad(), autocast(args.device, args.bf16):
        for i in range(repeat + 3):
            sync(args.device); t0 = time.perf_counter()
            pipe.vae.encode(px).latent_dist.sample() * pipe.vae.config.scaling_factor
            sync(args.device)
            if i >= 3: times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- where the time goes
class Laps:
    "Wall time between successive marks, summed per label (a label names what ran since the previous mark); a dict per step."
    def __init__(self, cuda=False): self.steps, self.cur, self.t, self.cuda = [], defaultdict(float), None, cuda
    def mark(self, label):
        if self.cuda: torch.cuda.synchronize()
        now = time.perf_counter()
        if self.t is not None: self.cur[label] += now - self.t
        self.t = now
    def end_step(self, label="other"):
        self.mark(label); self.steps.append(dict(self.cur)); self.cur.clear()


@contextmanager
def hooks(pipe, laps):
    "Marks at the text encoders' and UNet's forward, at the UNet's backward start and end, around optimizer steps."
    hs = []
    def post(label): return lambda m, a, kw, out: laps.mark(label)
    for name in ("text_encoder", "text_encoder_2", "unet"):
        m = getattr(pipe, name)
        hs.append(m.register_forward_pre_hook(lambda m, a, kw: laps.mark("prep (batch, noise, concat)"), with_kwargs=True))
        hs.append(m.register_forward_hook(post("UNet fwd" if name == "unet" else "text encoders fwd"), with_kwargs=True))
    def unet_grads(m, a, kw, out):  # the gradient reaching its output starts the UNet's backward, at its text input it ends
        out.sample.register_hook(lambda g: laps.mark("loss, .item(), backward start"))
        kw.get("encoder_hidden_states", a[2] if len(a) > 2 else None).register_hook(lambda g: laps.mark("UNet bwd"))
    hs.append(pipe.unet.register_forward_hook(unet_grads, with_kwargs=True))
    hs.append(register_optimizer_step_pre_hook(lambda *a: laps.mark("text encoders bwd")))
    hs.append(register_optimizer_step_post_hook(lambda *a: laps.mark("optimizer")))
    try: yield
    finally:
        for h in hs: h.remove()


@contextmanager
def patched(module, name, make):
    "Replace module.name by make(original) within the block."
    orig = getattr(module, name)
    setattr(module, name, make(orig))
    try: yield
    finally: setattr(module, name, orig)


def profile_steps(method, args, images, steps, warm):
    "Median seconds per part of one step, over `steps` steps after `warm`."
    pipe, laps = fresh_pipe(args), Laps(args.cuda)
    def step(f):
        def wrapped(*a, **kw): laps.mark("loop"); out = f(*a, **kw); laps.end_step(); return out
        return wrapped
    def telemetry(f):
        def wrapped(*a, **kw): laps.mark("other"); out = f(*a, **kw); laps.mark("telemetry"); return out
        return wrapped
    with hooks(pipe, laps):
        if method == "baseline":
            trainer = ScriptTI(pipe, images, args.resolution, bf16=args.bf16)
            trainer.mark = laps.mark
            for _ in range(warm + steps): step(trainer.step)()
        else:
            with patched(T, "_step", step), patched(T, "_telemetry", telemetry):
                T.train_dti(pipe, images, TOKEN, INIT, method=method, steps=warm + steps, batch_size=BATCH,
                            resolution=args.resolution, progress=False, mixed_precision="bf16" if args.bf16 else "no")
    rows = laps.steps[warm:]
    return {k: statistics.median(r.get(k, 0.0) for r in rows) for k in {k for r in rows for k in r}}


# ---------------------------------------------------------------------------------------------- FLOPs
def step_flops(method, args, images):
    "Model FLOPs (torch.utils.flop_counter) of the second optimisation step of a run."
    pipe, counted = fresh_pipe(args), {}
    def count_second(f):
        def wrapped(*a, **kw):
            if a[6] != 1: return f(*a, **kw)  # _step(pipe, slots, c, data, opt, gen, step, mp)
            with FlopCounterMode(display=False) as fc: out = f(*a, **kw)
            counted["flops"] = fc.get_total_flops(); return out
        return wrapped
    if method == "baseline":
        trainer = ScriptTI(pipe, images, args.resolution, bf16=args.bf16)
        trainer.step()
        with FlopCounterMode(display=False) as fc: trainer.step()
        return fc.get_total_flops()
    with patched(T, "_step", count_second):
        T.train_dti(pipe, images, TOKEN, INIT, method=method, steps=2, batch_size=BATCH, resolution=args.resolution,
                    progress=False, mixed_precision="bf16" if args.bf16 else "no")
    return counted["flops"]


def matmul_rate(n=8192, iters=20):
    "Measured bf16 matmul FLOP/s of the current CUDA device (n x n x n, timed with CUDA events)."
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3): a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters): a @ b
    end.record(); end.synchronize()
    return 2 * n ** 3 * iters / (start.elapsed_time(end) / 1e3)


# ---------------------------------------------------------------------------------------------- dry run
def meta_flops(pipe, resolution):
    "FLOPs of one step on the meta device: ours (`encode` + `denoise_loss` + backward, as `_step`), and the baseline's loss + backward."
    images = synthetic_subject(BATCH, 8)
    trainer = ScriptTI(pipe, images, resolution)  # makes both token tables trainable
    with FlopCounterMode(display=False) as fc: trainer.loss().backward()
    base = fc.get_total_flops()
    lat = resolution // pipe.vae_scale_factor
    batch = {k: tokenize(e, [TEMPLATES[0].format(TOKEN)] * BATCH) for k, e in text_encoders(pipe).items()}
    extra = dict(noise_scheduler=trainer.sched, time_ids=torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * BATCH))
    with FlopCounterMode(display=False) as fc:
        T.denoise_loss(pipe, encode(pipe, batch), torch.zeros(BATCH, 4, lat, lat, device="meta"), extra, torch.Generator()).backward()
    with FlopCounterMode(display=False) as fv:
        pipe.vae.encode(torch.zeros(BATCH, 3, resolution, resolution, device="meta", dtype=pipe.vae.dtype))
    return fc.get_total_flops(), base, fv.get_total_flops()


def dry(args):
    "Build the full-size models on the meta device; print parameter counts and FLOPs per step."
    print("\n## Full-size SDXL on the meta device (no weights allocated)\n")
    print("| model | parameters (real 49,408-row vocabulary) | expected |")
    print("|---|---|---|")
    expected = dict(unet="2.57 B", text_encoder="123 M", text_encoder_2="695 M", vae="83.7 M")
    for k, m in full_models("meta").items():
        print(f"| {type(m).__name__} ({k}) | {sum(p.numel() for p in m.parameters()) / 1e6:,.2f} M | {expected[k]} |")
    pipe = full_sdxl("meta")
    print(f"\nAs run: token tables resized to the tiny tokenizers' {len(pipe.tokenizer)} / {len(pipe.tokenizer_2)} rows "
          f"(text encoders {sum(p.numel() for p in pipe.text_encoder.parameters()) / 1e6:.2f} M and "
          f"{sum(p.numel() for p in pipe.text_encoder_2.parameters()) / 1e6:.2f} M parameters).")
    ours, base, vae = meta_flops(pipe, args.resolution)
    print(f"\nModel FLOPs per step at {args.resolution} px, batch {BATCH} (FlopCounterMode on meta tensors):")
    print(f"- ours (text encoders + UNet, forward and backward): {ours / 1e12:.2f} TFLOP")
    print(f"- baseline (the same + VAE encode every step): {base / 1e12:.2f} TFLOP; the VAE encode alone {vae / 1e12:.2f} TFLOP "
          f"({vae / base:.0%} of the baseline's FLOPs)")


# ---------------------------------------------------------------------------------------------- report
def step_table(args, per, single, peak, jobs, flops, rate):
    "The markdown table of per-step times (and GPU figures, job times)."
    med = {m: statistics.median(v) for m, v in per.items()}
    print(f"\n## Time per optimisation step: (T({args.long}) - T({args.short})) / {args.long - args.short}, "
          f"median of {args.repeats}\n")
    cols = "| run | ms/step | repeats (ms) | median single step (ms) | steps/s | baseline / this | model FLOP/step |"
    if args.cuda: cols += " achieved TFLOP/s | of matmul rate | peak memory |"
    if jobs: cols += f" {args.job_steps}-step job (load + set-up + steps) |"
    print(cols + "\n" + "|---" * (cols.count("|") - 1) + "|")
    for m in METHODS:
        name = "diffusers-script-style TI" if m == "baseline" else f'train_dti(method="{m}")'
        fl = f"{flops[m] / 1e12:.2f} T" if args.full else f"{flops[m] / 1e9:.3f} G"
        row = (f"| {name} | {med[m] * 1e3:.1f} | {', '.join(f'{x * 1e3:.0f}' for x in per[m])} "
               f"| {statistics.median(single[m]) * 1e3:.1f} | {1 / med[m]:.2f} | {med['baseline'] / med[m]:.2f}x | {fl} |")
        if args.cuda: row += f" {flops[m] / med[m] / 1e12:.1f} | {flops[m] / med[m] / rate:.1%} | {peak[m] / 2**30:.1f} GiB |"
        if jobs: row += f" {jobs[m]:.1f} s |"
        print(row)
    if rate: print(f"\nMeasured bf16 matmul rate (8192^3, CUDA events): {rate / 1e12:.0f} TFLOP/s; goal >= 40% of it.")
    return med


def vae_line(args, med):
    "The VAE encode's share of the baseline step against how much shorter our step is."
    vae = vae_encode_time(args)
    share, gain = vae / med["baseline"], 1 - med["dti"] / med["baseline"]
    print(f"\nVAE encode of one batch ({BATCH} x {args.resolution} px), alone: {vae * 1e3:.1f} ms (median of 50) = "
          f"{share:.1%} of the baseline step. dti's step is {gain:.1%} shorter "
          f"({'at least' if gain >= share else 'LESS than'} that share).")


def profile_table(args, images):
    "Where one step goes, baseline against dti."
    steps, warm = (10, 3) if args.full else (25, 5)
    print(f"\n## Where one step goes (ms, median over {steps} steps after {warm}; hooks, wall clock)\n")
    prof = {m: profile_steps(m, args, images, steps, warm) for m in ("baseline", "dti")}
    parts = ["data (PIL, tokenize)", "VAE encode", "prep (batch, noise, concat)", "text encoders fwd", "UNet fwd",
             "loss, .item(), backward start", "UNet bwd", "text encoders bwd", "optimizer", "restore", "telemetry", "loop", "other"]
    print("| part | baseline | dti |\n|---|---|---|")
    for p in parts: print(f"| {p} | {prof['baseline'].get(p, 0) * 1e3:.1f} | {prof['dti'].get(p, 0) * 1e3:.1f} |")
    print(f"| sum | {sum(prof['baseline'].values()) * 1e3:.1f} | {sum(prof['dti'].values()) * 1e3:.1f} |")


def report(args, images):
    per, single, peak = per_step_times(args, images)
    jobs = job_times(args, images)
    flops = {m: step_flops(m, args, images) for m in METHODS}
    med = step_table(args, per, single, peak, jobs, flops, matmul_rate() if args.cuda else None)
    vae_line(args, med)
    profile_table(args, images)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--short", type=int, help="steps of the short run (default 20; --full 3)")
    p.add_argument("--long", type=int, help="steps of the long run (default 200; --full 13)")
    p.add_argument("--repeats", type=int, help="short/long pairs per method (default 5; --full 1)")
    p.add_argument("--job-steps", type=int, help="steps of the whole-job run, 0 to skip (default 400; --full 0)")
    p.add_argument("--full", action="store_true", help="full-size SDXL architecture, random weights, 768 px, bf16")
    p.add_argument("--dry", action="store_true", help="with --full: build on the meta device, count parameters and FLOPs")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    full = dict(short=3, long=13, repeats=1, job_steps=0) if args.full else dict(short=20, long=200, repeats=5, job_steps=400)
    for k, v in full.items():
        if getattr(args, k) is None: setattr(args, k, v)
    args.cuda = torch.device(args.device).type == "cuda"
    args.bf16, args.resolution = args.full, 768 if args.full else 64
    args.make_pipe = full_sdxl if args.full else tiny_sdxl
    import diffusers.utils.logging as dlog, transformers.utils.logging as tlog
    dlog.disable_progress_bar(); tlog.disable_progress_bar(); dlog.set_verbosity_error()
    dev = torch.cuda.get_device_name() if args.cuda else f"{cpu_name()}, {torch.get_num_threads()} torch threads"
    print(f"# Training step benchmark — {time.strftime('%Y-%m-%d')}, {dev}, torch {torch.__version__}, "
          f"{'full-size SDXL (random weights, bf16)' if args.full else 'tiny SDXL (dti_lens.zoo)'}, "
          f"{args.resolution} px, batch {BATCH}")
    if args.dry:
        if not args.full: p.error("--dry needs --full")
        return dry(args)
    if args.full and not args.cuda: p.error("--full runs on a GPU: give --device cuda (or --dry)")
    if args.long <= args.short: p.error("--long must be greater than --short")
    if args.full: print(f"Token tables sized to the zoo's tiny tokenizers ({len(clip_tokenizer())} rows), not CLIP's 49,408.")
    report(args, synthetic_subject(6, args.resolution))


if __name__ == "__main__":
    main()

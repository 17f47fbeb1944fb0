"""Training speed: dti_lens.train_dti against a diffusers-script-style TI loop, on the same pipeline (SDXL, Wan2.1 or Flux), in one run.

Usage:
  .venv/bin/python benchmarks/train_step.py                       # tiny SDXL (dti_lens.zoo) on the CPU, a few minutes
  .venv/bin/python benchmarks/train_step.py --family wan          # tiny Wan2.1-T2V (UMT5, an image as a 1-frame video)
  .venv/bin/python benchmarks/train_step.py --family flux         # tiny FLUX.1-dev (CLIP pooled + T5, packed latents)
  .venv/bin/python benchmarks/train_step.py --full --device cuda  # full-size SDXL, random weights, 768 px, batch 4, bf16
  .venv/bin/python benchmarks/train_step.py --full --family wan --device cuda   # Wan2.1-T2V-1.3B architecture, 512 px
  .venv/bin/python benchmarks/train_step.py --full --family flux --device cuda  # FLUX.1-dev architecture, 512 px (--batch 2 if short of memory)
  .venv/bin/python benchmarks/train_step.py --full --dry [--family wan|flux]   # full-size models on the meta device: parameters, FLOPs
  .venv/bin/python benchmarks/train_step.py --family flux --repeats 1 --short 2 --long 4 --job-steps 0   # smoke run

The baseline re-implements (does not copy) the training step of diffusers' textual-inversion scripts. Common to every
family: the placeholder added to every tokenizer, every token table resized and trained whole by one AdamW (lr 5e-3,
weight decay 1e-2), every other row copied back after each step, per-step PIL preprocessing and tokenisation, a VAE
encode of the batch at every step, and the text encoders in train mode as the scripts set them (T5 / UMT5 then apply
their dropout, 0.1 in the real configs, which also keeps PyTorch's attention off its fused kernels; CLIP has none).
- SDXL (`ScriptTI`): examples/textual_inversion/textual_inversion_sdxl.py; DDPM noise, the scheduler's target, time ids.
  (diffusers' current SDXL script trains only text_encoder's table; the baseline trains both, as we do.)
- Flux (`ScriptFlux`): the pivotal-tuning (TI) step of examples/advanced_diffusion_training/
  train_dreambooth_lora_flux_advanced.py with T5 TI on: CLIP's pooled output and T5's states (512 tokens),
  latents (z - shift) * scale packed 2x2, image and text ids, the guidance embedding (3.5), timestep / 1000,
  uniform timesteps with sigmas looked up per sample (the scripts' `get_sigmas`), target noise - latents.
- Wan (`ScriptWan`): the same flow-matching step on Wan2.1's pieces: UMT5 states (512 tokens, zero past each prompt),
  an image as a 1-frame video, latents (b, 16, 1, h/8, w/8) normalised per channel by the VAE's latents_mean/std.
Ours is `train_dti(method="dti")` and its TI baseline `method="ti"`, which share our fast path (latents encoded once,
only the placeholder rows are parameters). Same pipeline (fresh per run), images (in memory for both: the script's
re-opening of every file each step is left out), batch size (--batch, default 4, one micro-batch per step for both:
train_dti gets grad_accum=1), resolution, templates, placeholder and init word.

Measured:
- time per optimisation step = (T(long) - T(short)) / (long - short) on fresh pipelines, so set-up cancels;
  median over --repeats, the runs interleaved so the machine's noise hits every method alike;
- wall time of a whole --job-steps job, pipeline load and set-up included;
- the VAE encode of one batch alone, as a share of the baseline step (the part we take away);
- where one step goes (forward hooks, gradient hooks and optimizer hooks; CPU wall clock); our log is written every
  `dti_lens.train.LOG_EVERY` steps, so its row is the mean per step, the other rows are medians;
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
from dti_lens.pipelines import adapter
from dti_lens.zoo import clip_tokenizer, t5_tokenizer, tiny_pipeline

TOKEN, INIT, BATCH = "<disc>", "toy", 4
METHODS = ("baseline", "dti", "ti")
FAMILIES = ("sdxl", "wan", "flux")


# ---------------------------------------------------------------------------------------------- the baselines
def autocast(device, bf16):
    "bf16 autocast on `device`, or nothing."
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()


class ScriptTI:
    "diffusers' textual_inversion_sdxl.py training step, re-implemented: whole token tables under AdamW, then restored."
    def __init__(self, pipe, images, resolution, token=TOKEN, init=INIT, lr=5e-3, weight_decay=1e-2, seed=42,
                 templates=TEMPLATES, bf16=False, batch=BATCH):
        self.pipe, self.images, self.res, self.token, self.templates, self.bf16 = pipe, images, resolution, token, templates, bf16
        self.batch_size, self.gen = batch, torch.Generator().manual_seed(seed)
        self.encs = self.text_path(pipe)
        self.ids = [self._add_token(tok, te, token, init) for tok, te in self.encs]
        self.denoiser = getattr(pipe, "unet", None) or pipe.transformer
        pipe.vae.requires_grad_(False); self.denoiser.requires_grad_(False)
        self.device, self.dtype, self.vae_dtype = pipe.device, self.denoiser.dtype, pipe.vae.dtype  # the script's fixed
        # accelerator.device and weight_dtype (diffusers' pipe.device and model.dtype walk every submodule per call)
        self.tables = [self._trainable_table(te) for _, te in self.encs]
        self.orig = [w.detach().clone() for w in self.tables]
        self.opt = torch.optim.AdamW(self.tables, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda _: 1.0)  # the script's "constant"
        self.sched = self.noise_scheduler(pipe.scheduler.config)
        self.order = []  # the DataLoader's shuffled epochs
        self.mark = lambda label: None  # profiling hook (see `profile_steps`)

    @staticmethod
    def text_path(pipe) -> list:
        "(tokenizer, text encoder) pairs whose tables the script trains."
        return [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]

    @staticmethod
    def noise_scheduler(config):
        from diffusers import DDPMScheduler
        return DDPMScheduler.from_config(config)

    @staticmethod
    def vae_encode(pipe, px):
        "The batch's latents, as the script encodes them every step."
        return pipe.vae.encode(px).latent_dist.sample() * pipe.vae.config.scaling_factor

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
        te.requires_grad_(False).train()  # train mode, as the scripts set it (T5/UMT5 then apply their dropout)
        w = te.get_input_embeddings().weight
        return w.requires_grad_(True)

    def pick(self):
        "The DataLoader's draw: the batch's images, their pixels (resize + centre crop + random flip, PIL), a prompt each."
        while len(self.order) < self.batch_size: self.order += torch.randperm(len(self.images), generator=self.gen).tolist()
        idx, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        ims = [self.images[i] for i in idx]
        px = torch.stack([to_pixels(im, self.res, flip=bool(torch.rand((), generator=self.gen) < 0.5)) for im in ims])
        texts = [self.templates[torch.randint(len(self.templates), (), generator=self.gen)].format(self.token) for _ in ims]
        return ims, px, texts

    def batch(self):
        "The DataLoader's batch: pixels, both tokenizers' ids per prompt, the SDXL time ids."
        ims, px, texts = self.pick()
        ids = [torch.cat([tok(t, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
                          for t in texts]) for tok, _ in self.encs]
        time_ids = torch.tensor([[im.height, im.width, *center_crop_box((im.height, im.width), self.res)[1], self.res, self.res]
                                 for im in ims], dtype=torch.float32)
        return px, ids, time_ids

    def loss(self):
        "The step's loss, VAE encode included."
        px, ids, time_ids = self.batch(); self.mark("data (PIL, tokenize)")
        dev, dtype, unet = self.device, self.dtype, self.denoiser
        with autocast(dev, self.bf16):
            latents = self.vae_encode(self.pipe, px.to(dev, self.vae_dtype)); self.mark("VAE encode")
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
        "Copy back every row but the placeholder's, on every table."
        for w, orig, i in zip(self.tables, self.orig, self.ids):
            keep = torch.ones(len(w), dtype=torch.bool); keep[i] = False
            w[keep] = orig[keep]


class ScriptFlow(ScriptTI):
    "The diffusers flow-matching scripts' TI step (SD3 / Flux / SANA style); subclasses give the text path and latents."
    max_length = (512,)  # tokenizer length per encoder of `text_path`

    @staticmethod
    def noise_scheduler(config):
        from diffusers import FlowMatchEulerDiscreteScheduler  # the scripts' training scheduler, from the pipeline's config
        return FlowMatchEulerDiscreteScheduler.from_config(config)

    def prompt(self, text): return text

    def batch(self):
        "The DataLoader's batch: pixels, and per encoder the ids and attention mask of the (cleaned) prompts."
        _, px, texts = self.pick()
        texts = [self.prompt(t) for t in texts]
        toks = [tok(texts, padding="max_length", max_length=n, truncation=True, return_tensors="pt")
                for (tok, _), n in zip(self.encs, self.max_length)]
        return px, [(b.input_ids, b.attention_mask) for b in toks]

    def timesteps(self, n, ndim):
        "The scripts' draw: uniform indices into the training schedule; sigmas found by timestep (`get_sigmas`, a host sync each)."
        dev = self.device if self.device.type != "meta" else torch.device("cpu")  # .item() cannot read meta tensors
        idx = (torch.rand(n) * self.sched.config.num_train_timesteps).long()
        t = self.sched.timesteps[idx].to(dev)
        schedule, sigmas = self.sched.timesteps.to(dev), self.sched.sigmas.to(dev)
        sigma = sigmas[[(schedule == x).nonzero().item() for x in t]].flatten()
        return sigma.view(-1, *[1] * (ndim - 1)).to(self.device), t.to(self.device)

    def loss(self):
        "The step's loss, VAE encode included: x_s = (1 - s) z + s n, target n - z, unweighted mean square."
        px, toks = self.batch(); self.mark("data (PIL, tokenize)")
        dev = self.device
        with autocast(dev, self.bf16):
            latents = self.vae_encode(self.pipe, px.to(dev, self.vae_dtype)).to(self.dtype); self.mark("VAE encode")
            noise = torch.randn_like(latents)
            sigma, t = self.timesteps(len(latents), latents.ndim)
            sigma = sigma.to(latents)  # the scripts' get_sigmas(..., dtype=model_input.dtype)
            noisy = ((1 - sigma) * latents + sigma * noise).to(self.dtype)
            cond = self.text([(i.to(dev), m.to(dev)) for i, m in toks])
            pred = self.predict(noisy, t, cond)
            return F.mse_loss(pred.float(), (noise - latents).float())


class ScriptWan(ScriptFlow):
    "The flow-matching TI step on Wan2.1-T2V: UMT5's whole table under AdamW, a 1-frame video VAE encode every step."
    max_length = (512,)  # WanPipeline's max_sequence_length

    @staticmethod
    def text_path(pipe): return [(pipe.tokenizer, pipe.text_encoder)]

    def prompt(self, text):
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean  # what WanPipeline does to every prompt
        return prompt_clean(text)

    @staticmethod
    def vae_encode(pipe, px):
        "(b, 16, 1, h/8, w/8) latents of the batch as 1-frame videos, normalised per channel by latents_mean / latents_std."
        c = pipe.vae.config
        z = pipe.vae.encode(px.unsqueeze(2)).latent_dist.sample()
        per_channel = lambda v: torch.tensor(v).view(1, -1, 1, 1, 1).to(z)
        return (z - per_channel(c.latents_mean)) / per_channel(c.latents_std)

    def text(self, toks):
        (ids, mask), = toks
        _, te = self.encs[0]
        h = te(ids, mask).last_hidden_state
        return h * mask[..., None].to(h.dtype)  # WanPipeline keeps each prompt's states, zeros after them

    def predict(self, x, t, cond):
        return self.denoiser(hidden_states=x, timestep=t, encoder_hidden_states=cond.to(self.dtype), return_dict=False)[0]


class ScriptFlux(ScriptFlow):
    "train_dreambooth_lora_flux_advanced.py's TI step (T5 TI on): CLIP's and T5's whole tables under AdamW, packed latents."
    max_length = (77, 512)  # CLIP's, and FluxPipeline's max_sequence_length for T5
    guidance = 3.5  # the scripts' --guidance_scale default

    @staticmethod
    def vae_encode(pipe, px):
        c = pipe.vae.config
        return (pipe.vae.encode(px).latent_dist.sample() - c.shift_factor) * c.scaling_factor

    def text(self, toks):
        (clip_ids, _), (t5_ids, _) = toks
        (_, clip), (_, t5) = self.encs
        return clip(clip_ids, output_hidden_states=False).pooler_output.to(self.dtype), t5(t5_ids)[0].to(self.dtype)

    def predict(self, x, t, cond):
        "Pack 2x2 latent patches, predict with image / text ids, guidance and timestep / 1000, unpack."
        from diffusers import FluxPipeline
        pooled, states = cond
        b, c, h, w = x.shape
        f = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        txt_ids = torch.zeros(states.shape[1], 3, device=x.device, dtype=x.dtype)
        guidance = torch.tensor([self.guidance], device=x.device).expand(b)
        pred = self.denoiser(hidden_states=FluxPipeline._pack_latents(x, b, c, h, w), timestep=t / 1000, guidance=guidance,
                             pooled_projections=pooled, encoder_hidden_states=states, txt_ids=txt_ids, img_ids=img_ids,
                             return_dict=False)[0]
        return FluxPipeline._unpack_latents(pred, h * f, w * f, f)


SCRIPTS = dict(sdxl=ScriptTI, wan=ScriptWan, flux=ScriptFlux)


# ---------------------------------------------------------------------------------------------- pipelines
def tiny(kind):
    "A maker of the zoo's tiny pipeline of `kind` on a device."
    return lambda device="cpu": tiny_pipeline(kind).to(device)


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


def _cast(model, dtype):
    "`model` in `dtype` but its `_keep_in_fp32_modules` (Wan's rope, time embedder, norms) in fp32, as from_pretrained loads it."
    model.to(dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if any(k in name.split(".") for k in keep) and t.is_floating_point(): t.data = t.data.float()
    return model.eval()


def _built(device, dtype, makers:dict) -> dict:
    "Each model of `makers` built on `device` and cast to `dtype` before the next is built (peak: one model in fp32)."
    with torch.device(device): return {k: _cast(make(), dtype) for k, make in makers.items()}


def _t5_xxl(vocab, special, umt5=False):
    "T5 v1.1 XXL's encoder (Flux) or UMT5-XXL's (Wan): 24 blocks, width 4096, 64 heads, gated GELU."
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel
    config, model = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    return model(config(vocab_size=vocab, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                        feed_forward_proj="gated-gelu", tie_word_embeddings=False, **special))


def full_wan_models(device, vocab=256384, special=dict(pad_token_id=0, eos_token_id=1), dtype=torch.bfloat16):
    "Wan2.1-T2V-1.3B's architecture with random weights: the 30-block DiT (width 1536), UMT5-XXL's encoder, the Wan VAE."
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    return _built(device, dtype, dict(
        transformer=lambda: WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                                                  in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                                                  num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6),
        text_encoder=lambda: _t5_xxl(vocab, special, umt5=True),
        vae=lambda: AutoencoderKLWan(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                     temperal_downsample=[False, True, True])))


def full_wan(device="cuda"):
    "The full-size Wan2.1-T2V-1.3B architecture (random weights, bf16) with the zoo's tiny T5 tokenizer."
    from diffusers import UniPCMultistepScheduler, WanPipeline
    tok = t5_tokenizer()
    m = full_wan_models(device, len(tok), dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return WanPipeline(tokenizer=tok, scheduler=sched, **m)


def full_flux_models(device, vocab1=49408, vocab2=32128, special1=dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=1),
                     special2=dict(pad_token_id=0, eos_token_id=1), dtype=torch.bfloat16):
    "FLUX.1-dev's architecture with random weights: the 19 + 38-block MMDiT (width 3072), CLIP-L, T5-XXL's encoder, the VAE."
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel
    _, clip_l, _, _ = full_configs(vocab1, special=special1)
    return _built(device, dtype, dict(
        transformer=lambda: FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                                   pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        text_encoder=lambda: CLIPTextModel(CLIPTextConfig(**clip_l)),
        text_encoder_2=lambda: _t5_xxl(vocab2, special2),
        vae=lambda: AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                                  layers_per_block=2, latent_channels=16, norm_num_groups=32, sample_size=1024,
                                  scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)))


def full_flux(device="cuda"):
    "The full-size FLUX.1-dev architecture (random weights, bf16) with the zoo's tiny CLIP and T5 tokenizers."
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    special1 = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    m = full_flux_models(device, len(tok), len(tok2), special1, dict(pad_token_id=tok2.pad_token_id, eos_token_id=tok2.eos_token_id))
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(tokenizer=tok, tokenizer_2=tok2, scheduler=sched, **m)


FULL = dict(sdxl=full_sdxl, wan=full_wan, flux=full_flux)
FULL_NAMES = dict(sdxl="SDXL", wan="Wan2.1-T2V-1.3B", flux="FLUX.1-dev")
FULL_RESOLUTION = dict(sdxl=768, wan=512, flux=512)  # the families' training defaults (dti_lens.train.FAMILY_DEFAULTS)


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


def script(pipe, args, images):
    "The family's baseline trainer on `pipe`."
    return args.script(pipe, images, args.resolution, bf16=args.bf16, batch=args.batch)


def ours(pipe, args, images, method, steps):
    "train_dti on `pipe`: one micro-batch of --batch per step, like the baseline."
    return T.train_dti(pipe, images, TOKEN, INIT, method=method, steps=steps, batch_size=args.batch, grad_accum=1,
                       resolution=args.resolution, progress=False, mixed_precision="bf16" if args.bf16 else "no")


def run(method, steps, args, images, step_times=None):
    "One run on a fresh pipeline: (seconds to build/load it, seconds to train `steps` steps); each step's time to `step_times`."
    step_times = [] if step_times is None else step_times
    t0 = time.perf_counter()
    pipe = fresh_pipe(args); sync(args.device)
    t1 = time.perf_counter()
    if method == "baseline":
        trainer = script(pipe, args, images)
        bad = sum(not math.isfinite(timing(step_times)(trainer.step)()) for _ in range(steps))
    else:
        with patched(T, "_step", timing(step_times)):  # _step(run): one optimisation step
            bad = ours(pipe, args, images, method, steps).nan_steps
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
    px = torch.randn(args.batch, 3, args.resolution, args.resolution, device=args.device, dtype=pipe.vae.dtype)
    times = []
    with torch.no_grad(), autocast(args.device, args.bf16):
        for i in range(repeat + 3):
            sync(args.device); t0 = time.perf_counter()
            args.script.vae_encode(pipe, px)
            sync(args.device)
            if i >= 3: times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- where the time goes
LOG_FLUSH = "telemetry (log flush)"


class Laps:
    "Wall time between successive marks, summed per label (a label names what ran since the previous mark); a dict per step."
    def __init__(self, cuda=False): self.steps, self.cur, self.t, self.cuda = [], defaultdict(float), None, cuda
    def _now(self):
        if self.cuda: torch.cuda.synchronize()
        return time.perf_counter()
    def mark(self, label):
        now = self._now()
        if self.t is not None: self.cur[label] += now - self.t
        self.t = now
    def mark_previous(self, label):
        "Like `mark`, but the time goes to the last finished step (work done after it, for it: the log flush)."
        now, into = self._now(), self.steps[-1] if self.steps else self.cur
        into[label] = into.get(label, 0.0) + now - self.t
        self.t = now
    def end_step(self, label="other"):
        self.mark(label); self.steps.append(dict(self.cur)); self.cur.clear()


@contextmanager
def hooks(pipe, laps, denoiser="UNet"):
    "Marks at the text encoders' and the denoiser's forward, at its backward start and end, around optimizer steps."
    hs = []
    def post(label): return lambda m, a, kw, out: laps.mark(label)
    net = getattr(pipe, "unet", None) or pipe.transformer
    for m in [getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2")] + [net]:
        if m is None: continue
        hs.append(m.register_forward_pre_hook(lambda m, a, kw: laps.mark("prep (batch, noise, concat)"), with_kwargs=True))
        hs.append(m.register_forward_hook(post(f"{denoiser} fwd" if m is net else "text encoders fwd"), with_kwargs=True))
    def net_grads(m, a, kw, out):  # the gradient reaching its output starts the denoiser's backward, at its text input it ends
        (out.sample if hasattr(out, "sample") else out[0]).register_hook(lambda g: laps.mark("loss, backward start"))
        kw.get("encoder_hidden_states", a[2] if len(a) > 2 else None).register_hook(lambda g: laps.mark(f"{denoiser} bwd"))
    hs.append(net.register_forward_hook(net_grads, with_kwargs=True))
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
    "Seconds per part of one step over `steps` steps after `warm`: medians, and the log flush's mean per step."
    pipe, laps = fresh_pipe(args), Laps(args.cuda)
    def step(f):
        def wrapped(*a, **kw): laps.mark("loop"); out = f(*a, **kw); laps.end_step(); return out
        return wrapped
    def flush(f):  # flush_log(run): every LOG_EVERY steps, after the step
        def wrapped(*a, **kw): laps.mark("loop"); out = f(*a, **kw); laps.mark_previous(LOG_FLUSH); return out
        return wrapped
    with hooks(pipe, laps, args.denoiser):
        if method == "baseline":
            trainer = script(pipe, args, images)
            trainer.mark = laps.mark
            for _ in range(warm + steps): step(trainer.step)()
        else:
            with patched(T, "_step", step), patched(T, "flush_log", flush):
                ours(pipe, args, images, method, warm + steps)
    rows = laps.steps[warm:]
    avg = lambda k: (statistics.mean if k == LOG_FLUSH else statistics.median)([r.get(k, 0.0) for r in rows])
    return {k: avg(k) for k in {k for r in rows for k in r}}


# ---------------------------------------------------------------------------------------------- FLOPs
def counted_attention(args):
    "On the CPU, attention by the math kernel: FlopCounterMode has no formula for the CPU flash kernel (it would count 0)."
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return nullcontext() if args.cuda else sdpa_kernel(SDPBackend.MATH)


def step_flops(method, args, images):
    "Model FLOPs (torch.utils.flop_counter) of the second optimisation step of a run."
    pipe, counted = fresh_pipe(args), {}
    def count_second(f):
        def wrapped(run):
            if run.step != 1: return f(run)  # run.step: steps done, so 1 during the second
            with FlopCounterMode(display=False) as fc: out = f(run)
            counted["flops"] = fc.get_total_flops(); return out
        return wrapped
    with counted_attention(args):
        if method == "baseline":
            trainer = script(pipe, args, images)
            trainer.step()
            with FlopCounterMode(display=False) as fc: trainer.step()
            return fc.get_total_flops()
        with patched(T, "_step", count_second): ours(pipe, args, images, method, 2)
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
def meta_flops(pipe, args):
    "FLOPs of one step on the meta device: ours (the adapter's `encode` + `loss` + backward, as `_step`), the baseline's, the VAE's."
    images, res, b = synthetic_subject(args.batch, 8), args.resolution, args.batch
    trainer = args.script(pipe, images, res, batch=b)  # makes every token table trainable (no autocast on meta)
    from transformers import masking_utils  # its check whether a padding mask can be skipped reads the mask (.item())
    with patched(masking_utils, "_ignore_bidirectional_mask_sdpa", lambda f: lambda *a, **kw: False):
        with FlopCounterMode(display=False) as fc: trainer.loss().backward()
    base = fc.get_total_flops()
    fam = adapter(pipe)
    with FlopCounterMode(display=False) as fv:  # the latents' shape for the family, and the VAE encode's FLOPs
        cache = fam.encode_images(torch.zeros(b, 3, res, res, device="meta", dtype=pipe.vae.dtype),
                                  torch.full((b, 2), res), torch.zeros(b, 2, dtype=torch.long))
    with patched(masking_utils, "_ignore_bidirectional_mask_sdpa", lambda f: lambda *a, **kw: False), \
            FlopCounterMode(display=False) as fc:
        cond = fam.encode(fam.tokenize([TEMPLATES[0].format(TOKEN)] * b))
        fam.loss(cond, cache, list(range(b)), torch.Generator()).backward()
    return fc.get_total_flops(), base, fv.get_total_flops()


def meta_models(family):
    "The full-size models of `family` on the meta device, with the real vocabularies."
    return dict(sdxl=lambda: full_models("meta"), wan=lambda: full_wan_models("meta"), flux=lambda: full_flux_models("meta"))[family]()


EXPECTED = dict(  # published sizes of the real models
    sdxl=dict(unet="2.57 B", text_encoder="123 M", text_encoder_2="695 M", vae="83.7 M"),
    wan=dict(transformer="1.3 B (the model's name)", text_encoder="UMT5-XXL encoder, about 5.7 B", vae="Wan VAE, about 127 M"),
    flux=dict(transformer="about 11.9 B (\"12B\")", text_encoder="123 M (CLIP-L)", text_encoder_2="T5-XXL encoder, 4.76 B",
              vae="about 84 M"))


def dry(args):
    "Build the full-size models on the meta device; print parameter counts and FLOPs per step."
    name = FULL_NAMES[args.family]
    print(f"\n## Full-size {name} on the meta device (no weights allocated)\n")
    print("| model | parameters (real vocabularies) | expected |")
    print("|---|---|---|")
    for k, m in meta_models(args.family).items():
        print(f"| {type(m).__name__} ({k}) | {sum(p.numel() for p in m.parameters()) / 1e6:,.2f} M | {EXPECTED[args.family][k]} |")
    pipe = FULL[args.family]("meta")
    encs = [(k, getattr(pipe, k), getattr(pipe, t)) for k, t in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
            if getattr(pipe, k, None) is not None]
    print(f"\nAs run: token tables resized to the tiny tokenizers' " + " / ".join(str(len(t)) for _, _, t in encs) + " rows "
          "(text encoders " + " and ".join(f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f} M" for _, m, _ in encs) + " parameters).")
    ours_, base, vae = meta_flops(pipe, args)
    print(f"\nModel FLOPs per step at {args.resolution} px, batch {args.batch} (FlopCounterMode on meta tensors):")
    print(f"- ours (text encoders + {args.denoiser}, forward and backward): {ours_ / 1e12:.2f} TFLOP")
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
    print(f"\nVAE encode of one batch ({args.batch} x {args.resolution} px), alone: {vae * 1e3:.1f} ms (median of 50) = "
          f"{share:.1%} of the baseline step. dti's step is {gain:.1%} shorter "
          f"({'at least' if gain >= share else 'LESS than'} that share).")


def profile_table(args, images):
    "Where one step goes, baseline against dti."
    steps, warm = (10, 3) if args.full else (25, 5)
    print(f"\n## Where one step goes (ms, median over {steps} steps after {warm}; {LOG_FLUSH}: mean per step; "
          "hooks, wall clock)\n")
    prof = {m: profile_steps(m, args, images, steps, warm) for m in ("baseline", "dti")}
    d = args.denoiser
    parts = ["data (PIL, tokenize)", "VAE encode", "prep (batch, noise, concat)", "text encoders fwd", f"{d} fwd",
             "loss, backward start", f"{d} bwd", "text encoders bwd", "optimizer", "restore", LOG_FLUSH, "loop", "other"]
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
    p.add_argument("--family", choices=FAMILIES, default="sdxl", help="pipeline family (default sdxl)")
    p.add_argument("--short", type=int, help="steps of the short run (default 20; --full 3)")
    p.add_argument("--long", type=int, help="steps of the long run (default 200; --full 13)")
    p.add_argument("--repeats", type=int, help="short/long pairs per method (default 5; --full 1)")
    p.add_argument("--job-steps", type=int, help="steps of the whole-job run, 0 to skip (default 400; --full 0)")
    p.add_argument("--batch", type=int, default=BATCH, help=f"images per step, for both trainers (default {BATCH})")
    p.add_argument("--full", action="store_true",
                   help="full-size architecture, random weights, bf16: SDXL 768 px, Wan2.1-T2V-1.3B / FLUX.1-dev 512 px")
    p.add_argument("--dry", action="store_true", help="with --full: build on the meta device, count parameters and FLOPs")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    full = dict(short=3, long=13, repeats=1, job_steps=0) if args.full else dict(short=20, long=200, repeats=5, job_steps=400)
    for k, v in full.items():
        if getattr(args, k) is None: setattr(args, k, v)
    if args.batch < 1: p.error("--batch must be >= 1")
    args.cuda = torch.device(args.device).type == "cuda"
    args.bf16, args.resolution = args.full, FULL_RESOLUTION[args.family] if args.full else 64
    args.make_pipe = FULL[args.family] if args.full else tiny(args.family)
    args.script, args.denoiser = SCRIPTS[args.family], "UNet" if args.family == "sdxl" else "DiT"
    import diffusers.utils.logging as dlog, transformers.utils.logging as tlog
    dlog.disable_progress_bar(); tlog.disable_progress_bar(); dlog.set_verbosity_error()
    dev = torch.cuda.get_device_name() if args.cuda else f"{cpu_name()}, {torch.get_num_threads()} torch threads"
    kind = f"full-size {FULL_NAMES[args.family]} (random weights, bf16)" if args.full else f"tiny {args.family} (dti_lens.zoo)"
    print(f"# Training step benchmark — {time.strftime('%Y-%m-%d')}, {dev}, torch {torch.__version__}, "
          f"{kind}, {args.resolution} px, batch {args.batch}")
    if args.dry:
        if not args.full: p.error("--dry needs --full")
        return dry(args)
    if args.full and not args.cuda: p.error("--full runs on a GPU: give --device cuda (or --dry)")
    if args.long <= args.short: p.error("--long must be greater than --short")
    if args.full:
        toks = dict(sdxl=[("CLIP", clip_tokenizer)], wan=[("UMT5", t5_tokenizer)], flux=[("CLIP", clip_tokenizer), ("T5", t5_tokenizer)])
        print("Token tables sized to the zoo's tiny tokenizers (" + ", ".join(f"{name} {len(make())} rows" for name, make in
              toks[args.family]) + "), not the real vocabularies.")
    report(args, synthetic_subject(6, args.resolution))


if __name__ == "__main__":
    main()

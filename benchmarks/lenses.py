"""Lens speed on a CLIP-L-sized text encoder: the position probe (Lemma 1) and the residual-angle tracer (Lemma 2).

Usage: .venv/bin/python benchmarks/lenses.py [--repeats N] [--device cuda]

The encoder is a random-weight `CLIPTextModel` with CLIP-L's architecture, built from a config: 12 blocks, width 768,
a 49,408 x 768 token table, 77 positions. Token rows get CLIP-L's published norm statistics (0.387 +- 0.018) and
position rows the zoo's tiny-CLIP norms (about 0.11; see nbs/05_probe.ipynb), so the printed probe curve is a sanity
check as well as a timing. Target: both lenses together well under 2 minutes on 2 CPU cores.

- position_probe: default arguments (2,048 tokens, 3/4 train, MLP hidden 256, 500 steps of 512 pairs, all 77 positions,
  scales 0.5-16) with tokenizer=None, i.e. tokens drawn from all 49,408 rows;
- residual_angles: one prompt, one word, scales (1, 2, 4, 8, 16), through all 12 blocks (the zoo's CLIP tokenizer:
  its ids are valid rows of the 49,408-row table).
"""
import argparse, platform, statistics, time

import torch

from dti_lens.probe import position_probe
from dti_lens.zoo import clip_tokenizer

try:
    from dti_lens.residual import residual_angles
except ImportError:  # PLACEHOLDER for the lead: dti_lens/residual.py (nbs/06_residual.ipynb) not exported yet
    residual_angles = None

PROMPT, WORD, RESIDUAL_SCALES = "a photo of a dog on the beach", "dog", (1, 2, 4, 8, 16)


def clip_l_sized(seed=0):
    "A random-weight CLIP-L-sized text encoder (12 x 768, 49,408 x 768 tokens, 77 positions), built from a config."
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    torch.manual_seed(seed)
    model = CLIPTextModel(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    unit = lambda n: (lambda w: w / w.norm(dim=1, keepdim=True))(torch.randn(n, 768, generator=g))
    with torch.no_grad():
        model.embeddings.token_embedding.weight.copy_(unit(49408) * (0.387 + 0.018 * torch.randn(49408, 1, generator=g)))
        model.embeddings.position_embedding.weight.copy_(unit(77) * 0.11)
    return model


def timed(f, repeats):
    "Last result of f() and the median wall time of `repeats` calls, in seconds."
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); out = f(); times.append(time.perf_counter() - t0)
    return out, statistics.median(times), times


def time_residual(model, tok, repeats):
    "Median time of residual_angles on the encoder, or None while the module is missing."
    if residual_angles is None:
        print("- residual_angles: PENDING (dti_lens.residual not available); the lead completes this row")
        return None
    r, t, ts = timed(lambda: residual_angles(model, tok, PROMPT, WORD, scales=RESIDUAL_SCALES), repeats)
    means = ", ".join(f"s={s:g}: {v:.2f}" for s, v in r.mean.items())
    print(f"- residual_angles({PROMPT!r}, {WORD!r}, scales={RESIDUAL_SCALES}): {t:.2f} s median of {repeats} "
          f"({', '.join(f'{x:.2f}' for x in ts)}); mean degrees per block {means}")
    return t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    import transformers
    print(f"# Lenses benchmark: {time.strftime('%Y-%m-%d')}, {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}\n")
    t0 = time.perf_counter()
    model = clip_l_sized().to(args.device)
    print(f"- build CLIP-L-sized CLIPTextModel ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters): "
          f"{time.perf_counter() - t0:.1f} s")
    r, t_probe, ts = timed(lambda: position_probe(model, None), args.repeats)
    print(f"- position_probe (defaults, 77 positions, {r.n_tokens[0]} train / {r.n_tokens[1]} test tokens of 49,408 rows): "
          f"{t_probe:.1f} s median of {args.repeats} ({', '.join(f'{x:.1f}' for x in ts)})")
    print("  accuracy " + ", ".join(f"s={s:g}: {a:.3f}" for s, a in r.accuracy.items()) + f" (chance {r.chance:.3f})")
    t_res = time_residual(model, clip_tokenizer(), args.repeats)
    if t_res is not None:
        total = t_probe + t_res
        print(f"- both lenses: {total:.1f} s (target < 120 s: {'met' if total < 120 else 'NOT met'})")


if __name__ == "__main__":
    main()

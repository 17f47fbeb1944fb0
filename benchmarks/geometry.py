"""The vocabulary-geometry lens at CLIP-L size: `token_neighbours` on a 49,408 x 768 token table.

Usage: .venv/bin/python benchmarks/geometry.py [--repeat 10]
A CLIPTextModel (one block) with a random 49,408 x 768 table at CLIP-L's norm statistics (0.387, std 0.018) and an
offline byte-level tokenizer of the same size. Times one query (both metrics, k = 10) as a vector and as a word,
against the bare `nearest` calls it wraps, plus `norm_stats` and `vocab_norm_figure`; checks the neighbours
against a float64 brute-force ranking. Target: under 1 s per query.
"""
import argparse, platform, statistics, subprocess, time

import torch

from dti_lens.geometry import METRICS, norm_stats, token_neighbours, vocab_norm_figure, vocab_table
from dti_lens.sphere import nearest


def machine() -> str:
    "lscpu's model name, the core count and torch's thread count."
    try: name = next(l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration): name = platform.processor() or platform.machine()
    import os
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"


def clip_l_sized(n=49408, d=768, seed=0):
    "A one-block CLIP text encoder with an n x d table of random directions at CLIP-L's norms, and a tokenizer of n tokens."
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    alphabet = sorted(ByteLevel.alphabet())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    vocab += [f"tok{i}</w>" for i in range(n - len(vocab))]
    tok = CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=[], model_max_length=77)
    cfg = CLIPTextConfig(vocab_size=n, hidden_size=d, intermediate_size=64, num_hidden_layers=1, num_attention_heads=12,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = CLIPTextModel(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d, generator=g)
    with torch.no_grad(): model.get_input_embeddings().weight.copy_(w / w.norm(dim=1, keepdim=True) * (0.387 + 0.018 * torch.randn(n, 1, generator=g)))
    return model, tok


def timed(f, repeat):
    "Median wall time of f() over `repeat` calls, after one warm-up call."
    f()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter(); f(); times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(repeat):
    model, tok = clip_l_sized()
    w = vocab_table(model)
    queries = iter(torch.randn(10 * repeat + 10, w.shape[1]) * 0.387 / w.shape[1] ** 0.5)
    rows = [
        ("token_neighbours(vector), cosine + euclidean", timed(lambda: token_neighbours(model, tok, next(queries), k=10), repeat)),
        ("token_neighbours('a'), cosine + euclidean", timed(lambda: token_neighbours(model, tok, "a", k=10), repeat)),
        ("nearest x 2 (the search alone)", timed(lambda: [nearest(next(queries), w, 10, m) for m in METRICS], repeat)),
        ("norm_stats", timed(lambda: norm_stats(model, tok), repeat)),
        ("vocab_norm_figure", timed(lambda: vocab_norm_figure(model, tok), repeat)),
    ]
    q = torch.randn(w.shape[1]) * 0.014
    got = token_neighbours(model, tok, q, k=10)
    w64, q64 = w.double(), q.double()
    want = {"cosine": ((w64 @ q64) / (w64.norm(dim=1) * q64.norm())).topk(10).indices, "euclidean": (w64 - q64).norm(dim=1).topk(10, largest=False).indices}
    same = all([t for t, _ in got[m]] == tok.convert_ids_to_tokens(want[m].tolist()) for m in METRICS)
    print(f"# geometry benchmark, {time.strftime('%Y-%m-%d')}, {machine()}\n")
    print(f"| {w.shape[0]:,} x {w.shape[1]} table | time (median of {repeat}) |")
    print("|---|---|")
    for name, t in rows: print(f"| {name} | {t * 1e3:.1f} ms |")
    print(f"\nsame top-10 tokens as a float64 brute-force ranking (both metrics): {same}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=10)
    main(p.parse_args().repeat)

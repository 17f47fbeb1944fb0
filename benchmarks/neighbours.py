"""Nearest-neighbour queries over a vocabulary matrix: chunked `nearest` against the full-matrix way.

Usage: .venv/bin/python benchmarks/neighbours.py [--big]
The alternative normalises a copy of the whole vocabulary and scores all rows at once (what one writes
by hand). --big adds a 256,000 x 4096 float32 vocabulary (4 GiB, a Gemma2-sized table).
"""
import argparse, platform, statistics, time

import torch

from dti_lens import nearest


def _status_gib(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field))
    return int(line.split()[1]) / 2**20


def reset_peak():
    "Reset the kernel's peak-RSS counter (Linux clear_refs) and return the current RSS in GiB."
    with open("/proc/self/clear_refs", "w") as f: f.write("5")
    return _status_gib("VmRSS")


def full_matrix(q, vocab, k, metric):
    if metric == "cosine": return ((vocab / vocab.norm(dim=1, keepdim=True)) @ (q / q.norm())).topk(k)
    return torch.cdist(q[None], vocab)[0].topk(k, largest=False)


def bench(n, d, k=10, repeat=5):
    vocab = torch.randn(n, d) * 0.02
    queries = torch.randn(repeat, d) * 0.02
    for metric in ["cosine", "euclidean"]:
        for name, f in [("dti_lens.nearest", lambda q: nearest(q, vocab, k, metric)), ("full matrix", lambda q: full_matrix(q, vocab, k, metric))]:
            f(queries[0])
            rss0 = reset_peak()
            times = []
            for q in queries:
                t0 = time.perf_counter(); f(q); times.append(time.perf_counter() - t0)
            print(f"| {n:,} x {d} | {metric} | {name} | {statistics.median(times) * 1e3:.1f} ms | {_status_gib('VmHWM') - rss0:.2f} GiB |")
    same = nearest(queries[0], vocab, k).indices.equal(full_matrix(queries[0], vocab, k, "cosine").indices)
    print(f"\nsame top-{k} indices as the full-matrix way: {same}\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--big", action="store_true")
    args = p.parse_args()
    print(f"# neighbours benchmark — {time.strftime('%Y-%m-%d')}, {platform.machine()}, {torch.get_num_threads()} torch threads\n")
    print("| vocabulary | metric | method | time per query (median of 5) | peak memory added |")
    print("|---|---|---|---|---|")
    bench(49408, 768)
    if args.big: bench(256000, 4096)

"""vMF accuracy and speed: dti_lens against scipy.stats.vonmises_fisher, side by side in one run.

Usage: .venv/bin/python benchmarks/vmf.py [--quick]
Samples come from scipy's own sampler (our sampler is not the judge of our fitter). scipy's sampler
rotates with an O(n d^2) einsum, so d = 4096 uses 2000 samples (about 25 s each); --quick skips d = 4096.
"""
import argparse, platform, statistics, time, warnings

import numpy as np
import torch
from scipy import stats

from dti_lens import VonMisesFisher, fit_vmf, fit_vmf_mixture, match_components, normalize, random_mixture


def timed(f, repeat=5):
    "Result of f() and its median wall time in seconds."
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter(); out = f(); times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def scipy_samples(d, kappa, n, seed):
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(d); mu /= np.linalg.norm(mu)
    return mu, stats.vonmises_fisher(mu, kappa).rvs(n, random_state=rng)


def fit_table(ds):
    print("\n## Fit: kappa relative error and time (median of 5), same samples\n")
    print("| d | kappa | n | dti_lens MLE | rel.err | time | dti_lens unbiased=True | rel.err | scipy kappa | rel.err | time | scipy/ours time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in ds:
        for kappa in [10., 100., 1e3, 1e4]:
            n = 2000 if d >= 4096 else 5000
            mu, x = scipy_samples(d, kappa, n, seed=d)
            ours, t_ours = timed(lambda: fit_vmf(x))
            unb = fit_vmf(x, unbiased=True).kappa
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                (_, k_sc), t_sc = timed(lambda: stats.vonmises_fisher.fit(x))
            print(f"| {d} | {kappa:g} | {n} | {ours.kappa:.4g} | {abs(ours.kappa / kappa - 1):.2%} | {t_ours * 1e3:.1f} ms "
                  f"| {unb:.4g} | {abs(unb / kappa - 1):.2%} | {k_sc:.4g} | {abs(k_sc / kappa - 1):.2%} | {t_sc * 1e3:.1f} ms | {t_sc / t_ours:.1f}x |")


def log_prob_table():
    print("\n## log_prob against scipy (5 random unit vectors per cell)\n")
    print("| d | kappa | max rel. difference where scipy is finite | scipy finite | ours finite |")
    print("|---|---|---|---|---|")
    for d in [3, 64, 768, 4096]:
        mu = normalize(torch.randn(d, dtype=torch.float64))
        x = normalize(torch.randn(5, d, dtype=torch.float64))
        for kappa in [1e-3, 1., 50., 1e3, 1e7]:
            ours = VonMisesFisher(mu, kappa).log_prob(x).numpy()
            with np.errstate(all="ignore"): ref = stats.vonmises_fisher(mu.numpy(), kappa).logpdf(x.numpy())
            fin = np.isfinite(ref)
            diff = f"{np.max(np.abs(ours[fin] - ref[fin]) / np.abs(ref[fin]).clip(1)):.1e}" if fin.any() else "n/a"
            print(f"| {d} | {kappa:g} | {diff} | {fin.sum()}/5 | {np.isfinite(ours).sum()}/5 |")


def speed_targets():
    print("\n## Speed targets\n")
    x = VonMisesFisher(torch.randn(4096), 1000.).sample(5000, generator=torch.Generator().manual_seed(0))
    for name, data in [("float32 torch", x), ("float64 numpy", x.double().numpy())]:
        fit_vmf(data)
        _, t = timed(lambda: fit_vmf(data), repeat=20)
        print(f"- fit_vmf on 5000 x 4096 ({name}): {t * 1e3:.1f} ms (target < 50 ms)")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        _, t = timed(lambda: stats.vonmises_fisher.fit(x.double().numpy()))
    print(f"- scipy.stats.vonmises_fisher.fit on the same: {t * 1e3:.1f} ms")
    truth = random_mixture(np.geomspace(200, 5000, 64), 768, seed=2)
    xb, _ = truth.sample(49408, generator=torch.Generator().manual_seed(2))
    fit, t = timed(lambda: fit_vmf_mixture(xb.float(), 64, progress=False), repeat=1)
    err = np.abs(fit.kappas[match_components(fit, truth)].numpy() / truth.kappas.numpy() - 1)
    print(f"- fit_vmf_mixture, 64 components on 49,408 x 768: {t:.1f} s (target < 60 s), "
          f"{fit.split_merges} split-and-merge moves; kappa rel.err median {np.median(err):.2%}, worst {err.max():.2%}")
    plain, t = timed(lambda: fit_vmf_mixture(xb.float(), 64, split_merge=0, progress=False), repeat=1)
    err = np.abs(plain.kappas[match_components(plain, truth)].numpy() / truth.kappas.numpy() - 1)
    print(f"- the same without split-and-merge: {t:.1f} s; kappa rel.err median {np.median(err):.2%}, worst {err.max():.2%}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="skip d = 4096 in the fit table")
    args = p.parse_args()
    print(f"# vMF benchmark — {time.strftime('%Y-%m-%d')}, {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")
    fit_table([3, 64, 768] if args.quick else [3, 64, 768, 4096])
    log_prob_table()
    speed_targets()

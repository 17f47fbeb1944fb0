"""Evaluation throughput: `dti_lens.evaluate` against one pipeline call per image, same pipeline, same run.

Usage:
  .venv/bin/python benchmarks/evaluate.py                         # tiny SDXL (dti_lens.zoo) on the CPU, about 2 minutes
  .venv/bin/python benchmarks/evaluate.py --model tiny:sana       # tiny SANA (flow-matching Euler, 20 steps by default)
  .venv/bin/python benchmarks/evaluate.py --model stabilityai/stable-diffusion-xl-base-1.0 --device cuda \
      --image-model facebook/dinov2-base --text-model google/siglip-base-patch16-512 --steps 50 --resolution 1024 \
      --batch-size 16 --prompts 40 --seeds 4 --subjects 1        # full size in bf16: images/s and the Table 2 projection

Both sides generate the same images: every prompt x seed of one DTI token per subject (a synthetic DreamBooth folder,
tokens trained for 2 steps), with the evaluation scheduler (DDIM on SDXL, flow Euler on SANA), the same steps,
resolution and seeds, and score them with the same DINOv2 and SigLIP models (tiny ones from the zoo unless given).
- ours: `evaluate(...)`: `--batch-size` images per pipeline call (one generator per image), written atomically with
  their metadata, then scored in batches;
- baseline: what an evaluation script without batching does: one `pipe(prompt, generator=...)` call per image,
  each image saved, then the same scoring calls.
Printed: images/s of each and the ratio (ours / baseline). Timed after a warm-up call of each, pipeline loaded once.
"""
import argparse, platform, tempfile, time
from pathlib import Path

import torch

from dti_lens.data import dreambooth_dataset, synthetic_dreambooth
from dti_lens.encoders import scratch_tokens
from dti_lens.embeddings import load_embeddings
from dti_lens.evaluation import (PROMPT_SETS, PromptSet, evaluate, evaluation_sampler, find_targets,
                                 generation_prompt, scoring_prompt)
from dti_lens.fidelity import image_fidelity, text_fidelity, load_scorer
from dti_lens.pipelines import adapter
from dti_lens.train import load_pipeline, train_dti
from dti_lens.zoo import save_tiny_scorer


def baseline(pipe, runs, data, prompts, seeds, steps, resolution, scorers, out:Path) -> int:
    "One pipeline call per image, each saved as PNG, then the same scores; the number of images."
    n = 0
    pipe.set_progress_bar_config(disable=True)  # as evaluate runs it: no bar per call
    with evaluation_sampler(pipe) as _:
        for t in find_targets(runs, data):
            paths, texts = [], []
            with scratch_tokens(pipe):
                load_embeddings(pipe, t.folder, token=t.token)
                for i, tpl in enumerate(prompts.templates(t.class_word)):
                    for s in seeds:
                        img = pipe(generation_prompt(tpl, t.token), generator=torch.Generator().manual_seed(s),
                                   num_inference_steps=steps, height=resolution, width=resolution,
                                   **adapter(pipe).sample_kwargs()).images[0]  # SANA: no binning, no CHI
                        paths.append(out / f"{t.subject}_{i}_{s}.png"); img.save(paths[-1])
                        texts.append(scoring_prompt(tpl, t.class_word))
            image_fidelity(paths, t.references, scorers[0]); text_fidelity(paths, texts, scorers[1])
            n += len(paths)
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny:sdxl")
    p.add_argument("--device", default=None)
    p.add_argument("--subjects", type=int, default=2)
    p.add_argument("--prompts", type=int, default=8, help="templates per subject, from the 'dti' set")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="default: the family's evaluation sampler")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-model"); p.add_argument("--text-model")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    names = {"dog": "dog", "backpack": "backpack", "teapot": "teapot", "cat": "cat"}
    data = synthetic_dreambooth(tmp / "data", dict(list(names.items())[:a.subjects]))
    pipe = load_pipeline(a.model, a.device)
    for s in dreambooth_dataset(data):
        with scratch_tokens(pipe):
            train_dti(pipe, s.path, f"<{s.name}>", s.init, steps=2, resolution=a.resolution,
                      output_dir=tmp / "runs" / "dti" / s.name, progress=False)
    image_model = a.image_model or save_tiny_scorer("dinov2", tmp / "dinov2")
    text_model = a.text_model or save_tiny_scorer("siglip", tmp / "siglip")
    dev = adapter(pipe).device
    scorers = load_scorer(image_model, dev, ("cls",)), load_scorer(text_model, dev, ("image", "text", "sigmoid"))
    ps = PromptSet("bench", PROMPT_SETS["dti"].objects[:a.prompts], PROMPT_SETS["dti"].live[:a.prompts])
    seeds, steps = list(range(a.seeds)), a.steps or adapter(pipe).sampler["steps"]
    runs = [tmp / "runs" / "dti"]
    kw = dict(prompts=ps, seeds=seeds, steps=steps, resolution=a.resolution, batch_size=a.batch_size, progress=False,
              image_model=scorers[0], text_model=scorers[1])
    # warm-up: one image each way
    evaluate(runs, pipe, data, tmp / "warm", **kw | dict(prompts=PromptSet("w", ps.objects[:1], ps.live[:1]), seeds=[0]))
    baseline(pipe, runs, data, PromptSet("w", ps.objects[:1], ps.live[:1]), [0], steps, a.resolution, scorers,
             Path(tempfile.mkdtemp()))
    t0 = time.perf_counter(); ev = evaluate(runs, pipe, data, tmp / "ours", **kw); t_ours = time.perf_counter() - t0
    base_out = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    n = baseline(pipe, runs, data, ps, seeds, steps, a.resolution, scorers, base_out)
    t_base = time.perf_counter() - t0
    assert n == len(ev.records)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; model {a.model}, "
          f"{adapter(pipe).sampler} steps={steps}, {a.resolution} px, batch {a.batch_size}")
    print(f"{n} images ({a.subjects} subjects x {a.prompts} prompts x {a.seeds} seeds), generation and scoring:")
    print(f"  ours (evaluate, batched): {t_ours:7.1f} s  {n / t_ours:6.2f} images/s")
    print(f"  one call per image:       {t_base:7.1f} s  {n / t_base:6.2f} images/s")
    print(f"  ratio ours / baseline:    {t_base / t_ours:.2f}x")
    per_image = t_ours / n
    print(f"Table 2 projection at this rate (30 subjects x 160 images x 4 methods): {per_image * 30 * 160 * 4 / 3600:.1f} h")


if __name__ == "__main__":
    main()

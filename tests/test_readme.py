"""Every code snippet in README.md runs as shown, and the figures it quotes are what the notebooks print.

The ```python blocks run in order in one fresh interpreter, as a newcomer pastes them into one session, in a temporary
folder that holds `photos/my_dog` (six synthetic pictures). Only what cannot run here is substituted, and every
substitution is listed in SUBSTITUTIONS: no model hub (SDXL becomes the tiny zoo SDXL), and a few training steps
instead of 400. Each command of the ```bash blocks is classified in COMMANDS: run (with the same substitutions),
`--help`-level smoke, or a syntax check; an unclassified command fails the test.
"""
import json, os, re, shlex, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent

SUBSTITUTIONS = [  # (as written, as run): what a newcomer without a model hub or a GPU changes
    ("stabilityai/stable-diffusion-xl-base-1.0", "tiny:sdxl"),       # the tiny zoo SDXL, built from configs
    ('output_dir="runs/dog")', 'output_dir="runs/dog", steps=4)'),   # 4 steps, not 400
    ("--output-dir runs/dog", "--output-dir runs/dog_cli --steps 4"),  # same, for the CLI (and its own folder)
    ('seeds=[0, 1, 2, 3])', 'seeds=[0], prompts=["a {} on a table"], steps=2, resolution=64, '  # one small image,
     'image_model=__import__("dti_lens").save_tiny_scorer("dinov2", "dino"), '                  # tiny scorers
     'text_model=__import__("dti_lens").save_tiny_scorer("siglip", "sig"))'),
]


def blocks(lang:str) -> list[str]: return re.findall(rf"^```{lang}\n(.*?)^```", README, re.S | re.M)


def substitute(code:str) -> str:
    for a, b in SUBSTITUTIONS: code = code.replace(a, b)
    return code


def test_every_substitution_applies():
    "A substitution that no longer matches the README would silently run the snippet unchanged."
    text = "".join(blocks("python") + blocks("bash"))
    for a, _ in SUBSTITUTIONS: assert a in text, f"substitution {a!r} matches nothing in README.md"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    "A folder with photos/my_dog, as the README's snippets expect."
    from dti_lens import synthetic_subject
    d = tmp_path_factory.mktemp("readme")
    (d / "photos" / "my_dog").mkdir(parents=True)
    for i, im in enumerate(synthetic_subject(6, 64)): im.save(d / "photos" / "my_dog" / f"{i:02d}.png")
    return d


def run(cmd, cwd, timeout=900, **kw):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TQDM_DISABLE": "1"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


REPL = """
import ast, json, sys
src = sys.stdin.read()
g = {"__name__": "__main__"}
for node in ast.parse(src).body:  # statement by statement, printing each expression's value as a REPL does
    if isinstance(node, ast.Expr):
        value = eval(compile(ast.Expression(node.value), "README.md", "eval"), g)
        print("README-VALUE " + json.dumps([ast.get_source_segment(src, node), repr(value)]), flush=True)
    else: exec(compile(ast.Module([node], []), "README.md", "exec"), g)
"""


def test_python_snippets_run(workdir):
    code = "\n\n".join(substitute(b) for b in blocks("python"))
    assert len(blocks("python")) >= 3 and "train_dti(" in code and "diagnose(" in code
    r = run([sys.executable, "-c", REPL], workdir, input=code)
    assert r.returncode == 0, f"README python snippets failed:\n{r.stderr[-3000:]}"
    values = dict(json.loads(l.removeprefix("README-VALUE ")) for l in r.stdout.splitlines()
                  if l.startswith("README-VALUE "))
    # what the comment says, on the zoo SDXL, whose tables have the real encoders' norm statistics
    mags, quoted = eval(values["result.magnitudes"]), {"text_encoder": 0.387, "text_encoder_2": 0.452}
    assert mags.keys() == quoted.keys() and all(abs(mags[k] - quoted[k]) < 0.005 for k in quoted), mags
    summary = next(v for k, v in values.items() if k.startswith("diagnose("))
    assert "norm" in summary and "cosine" in summary, summary
    assert (workdir / "runs" / "dog" / "learned_embeds.safetensors").exists()
    assert eval(values["ev.summary"].replace("nan", "float('nan')"))[0]["images"] == 1
    assert (workdir / "evaluation" / "report.html").is_file()


# (pattern, how, why): each command line of the README's bash blocks must match exactly one pattern
COMMANDS = [
    (r"dti-lens train --model \S+ --images photos/my_dog .*", "run", "trains on the zoo SDXL (SUBSTITUTIONS)"),
    (r"dti-lens train \.\.\. --resume", "help:dti-lens train --help|--resume", "'...' stands for the command above"),
    (r"accelerate launch .* -m dti_lens\.cli train-many dreambooth\.json .*",
     "help:python -m dti_lens.cli train-many --help|--output-dir", "needs several GPUs and a DreamBooth folder"),
    (r"dti-lens evaluate runs/ti runs/dti --model \S+ --references \S+", "help:dti-lens evaluate --help|--references",
     "needs trained runs of every method and the DreamBooth dataset"),
    (r"\.venv/bin/papermill nbs/20_exp_table2\.ipynb .*", "help:papermill --help-notebook nbs/20_exp_table2.ipynb|size",
     "a full-size run needs a GPU and the DreamBooth dataset"),
    (r"bash tools/setup\.sh", "syntax", "needs the package registries; it is what CI runs first"),
    (r"bash tools/test\.sh", "syntax", "the whole test suite, this test included"),
    (r"\.venv/bin/nbdev-docs", "help:nbdev-docs --help|Create Quarto docs", "needs Quarto, which cannot be installed here"),
    (r"\.venv/bin/jupyter lab nbs/", "help:jupyter lab --help|JupyterLab", "starts a server that runs until stopped"),
    (r"\.venv/bin/python tools/refresh_outputs\.py nbs/NAME\.ipynb",
     "help:python tools/refresh_outputs.py --help|notebooks", "NAME is a placeholder; refreshing takes minutes"),
]


def commands() -> list[str]:
    lines = [re.sub(r"\s+#.*$", "", l).strip() for b in blocks("bash") for l in b.splitlines()]
    return [l for l in lines if l and not l.startswith("#")]


def test_every_bash_command_is_classified():
    for line in commands():
        n = sum(bool(re.fullmatch(p, line)) for p, _, _ in COMMANDS)
        assert n == 1, f"README command {line!r} matches {n} entries of COMMANDS: classify it in tests/test_readme.py"
    for p, _, _ in COMMANDS: assert any(re.fullmatch(p, l) for l in commands()), f"{p!r} matches no README command"


@pytest.mark.parametrize("line", commands())
def test_bash_command(line, workdir):
    how = next(h for p, h, _ in COMMANDS if re.fullmatch(p, line))
    if how == "run":
        r = run(shlex.split(substitute(line)), workdir)
        assert r.returncode == 0, r.stderr[-3000:]
        assert (workdir / "runs" / "dog_cli" / "learned_embeds.safetensors").exists(), sorted(workdir.rglob("*"))
    elif how == "syntax":
        r = run(["bash", "-n", shlex.split(line)[1]], ROOT)
        assert r.returncode == 0, r.stderr
    else:
        cmd, expect = how.removeprefix("help:").split("|")
        argv = shlex.split(cmd)
        argv[0] = sys.executable if argv[0] == "python" else str(BIN / argv[0])
        r = run(argv, ROOT, timeout=300)
        assert r.returncode == 0 and expect in r.stdout + r.stderr, (r.returncode, (r.stdout + r.stderr)[-2000:])


# The lens figures the README quotes, each with the notebook whose saved output prints it (at CPU size, refreshed by
# tools/refresh_outputs.py): (README text, notebook, pattern over the notebook's outputs, README's value of each
# group of the pattern: the printed number must round to it)
N = r"([\d.]+)"
FIGURES = [
    ("m* (mean) 1.066, std 0.229, min 0.245 (`[MASK]`), max 1.694", "04_geometry",
     rf"30,522 rows: mean {N}, std {N}, min {N}, max {N}[\s\S]*\[MASK\] {N}", ("1.066", "0.229", "0.245", "1.694", "0.245")),
    ("cosine neighbours apples .558, iphone .422, itunes .415, macintosh .407, mac .397", "04_geometry",
     rf"cosine +apples {N}, iphone {N}, itunes {N}, macintosh {N}, mac {N}\n", ("0.558", "0.422", "0.415", "0.407", "0.397")),
    ("Euclidean neighbours apples 1.227, macintosh 1.343, itunes 1.398, iphone 1.445, 木 1.453", "04_geometry",
     rf"euclidean apples {N}, macintosh {N}, itunes {N}, iphone {N}, 木 {N}\n", ("1.227", "1.343", "1.398", "1.445", "1.453")),
    ("share 27.7% of their tokens", "04_geometry", rf"\(cosine top-10 vs Euclidean top-10\): {N}%", ("27.7",)),
    ("96.5% of cosine neighbours are whole words against 33.6%", "04_geometry",
     rf"whole ASCII words: cosine {N}%, Euclidean {N}%", ("96.5", "33.6")),
    ("mean norm is 0.651 against 1.111", "04_geometry", rf"cosine neighbours {N}, Euclidean neighbours {N}", ("1.111", "0.651")),
    ("1.000, 1.000, 0.992, 0.771, 0.286, 0.079 (Lemma 1's shape", "05_probe",
     r"bert: 128 positions" + "".join(rf"[\s\S]*?\| {s} \| [\d.]+ \| {N} " for s in (0.5, 1, 2, 4, 8, 16)),
     ("1.000", "1.000", "0.992", "0.771", "0.286", "0.079")),
    ("reference's CLIP-L figures 1.0, 1.0, 0.88, 0.31, 0.065, 0.03", "05_probe",
     r"CLIP-L \(reference, position 0\)" + rf"\s+{N}" * 6, ("1.0", "1.0", "0.88", "0.31", "0.065", "0.03")),
    ("flat at about 26 deg per block for every s", "06_residual",
     r"MiniLM, 6 words:" + "".join(rf",? s={s}: {N}" for s in (1, 2, 4, 8, 16)), ("26",) * 5),
    ("falls from 54.6 deg at s = 1", "06_residual", rf"clip \(pre-norm\), word[^\n]*\n\s+1  \|row\|\s+[\d.]+\s+mean\s+{N} deg",
     ("54.6",)),
    ("to 19.0 deg at s = 16", "06_residual", rf"clip \(pre-norm\), word[\s\S]*?\n\s+16  \|row\|\s+[\d.]+\s+mean\s+{N} deg",
     ("19.0",)),
]


def saved_text(name:str) -> str:
    nb = json.loads((ROOT / "nbs" / f"{name}.ipynb").read_text(encoding="utf-8"))
    return "\n".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                     for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))


def rounds_to(printed:str, quoted:str) -> bool:
    "Whether `printed` rounds to `quoted` at the decimals `quoted` shows."
    decimals = len(quoted.partition(".")[2])
    return f"{float(printed):.{decimals}f}" == f"{float(quoted):.{decimals}f}"


@pytest.mark.parametrize("quote,name,pattern,values", FIGURES, ids=[f[0][:40] for f in FIGURES])
def test_readme_figure_is_what_the_notebook_prints(quote, name, pattern, values):
    assert quote in README, f"README.md no longer quotes {quote!r}: update FIGURES"
    m = re.search(pattern, saved_text(name))
    assert m, f"nbs/{name}.ipynb no longer prints what README.md quotes as {quote!r}"
    printed = m.groups()
    assert len(printed) == len(values) and all(map(rounds_to, printed, values)), (
        f"README.md quotes {quote!r}, nbs/{name}.ipynb prints {printed}: update README.md")

"""The `dti-lens` command, run as a user runs it: a subprocess with files on disk."""
import argparse, json, os, re, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

EXE = Path(sys.executable).parent / "dti-lens"   # the console script that set-up installed


def run(*args, cwd, env=None):
    return subprocess.run([str(EXE), *args], cwd=cwd, capture_output=True, text=True, env=env and {**os.environ, **env})


def _subject(folder, n=4, seed=0):
    from dti_lens.data import synthetic_subject
    folder.mkdir(parents=True)
    for i, im in enumerate(synthetic_subject(n, 64, seed)): im.save(folder / f"{i}.png")
    return folder


def one_error_line(res_or_err, command:str|None) -> str:
    "The single stderr line of a usage error, checked to be one line in the `dti-lens <command>: error:` form."
    err = res_or_err if isinstance(res_or_err, str) else res_or_err.stderr
    lines = err.splitlines()
    prog = f"dti-lens {command}" if command else "dti-lens"
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err, err
    return lines[0]


def test_demo_trains_dti_and_ti_and_writes_a_report(tmp_path):
    res = run("demo", "--out", "out", "--steps", "15", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = {m: (float(ms), float(first), float(last), float(ratio)) for m, ms, first, last, ratio in
            re.findall(r"^(dti|ti)\s+text_encoder\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", res.stdout, flags=re.M)}
    assert set(rows) == {"dti", "ti"}, res.stdout
    assert rows["dti"][3] == 1.0 and rows["dti"][1] == rows["dti"][0]  # DTI's norm is m* from the first step to the last
    assert rows["ti"][2] > rows["ti"][1]                                # TI's norm grows
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "plotly" in html and html.count("<img") >= 6
    assert "tiny:sd15 has random weights" in html                      # training_report(model=...) says samples are noise
    assert (tmp_path / "out" / "dti" / "learned_embeds.safetensors").exists()


def test_train_writes_every_format(tmp_path):
    _subject(tmp_path / "imgs")
    res = run("train", "--model", "tiny:sdxl", "--images", "imgs", "--token", "<disc>", "--init", "toy", "--steps", "3",
              "--batch-size", "2", "--output-dir", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    single = load_file(out / "disc.safetensors")
    assert single["clip_l"].shape == (1, 32) and single["clip_g"].shape == (1, 40)
    assert load_file(out / "learned_embeds.safetensors")["<disc>"].shape == (1, 32)
    assert len((out / "log.jsonl").read_text().splitlines()) == 3


def test_train_rejects_bad_settings_before_work(tmp_path):
    _subject(tmp_path / "imgs")
    for flags, msg in [(["--lr", "0"], "argument --lr: must be a number > 0; got '0'"),
                       (["--magnitude", "huge"], "argument --magnitude: must be mean, max, min or a number > 0"),
                       (["--kappa", "-1"], "argument --kappa: must be a number >= 0"),
                       (["--resolution", "60"], "--resolution must be a multiple of the model's latent factor 8")]:
        res = run("train", "--model", "tiny:sd15", "--images", "imgs", "--token", "<disc>", "--init", "toy", "--output-dir", "out",
                  *flags, cwd=tmp_path)
        assert res.returncode == 2 and msg in one_error_line(res, "train"), res.stderr
    assert not (tmp_path / "out").exists()


def test_train_many_splits_subjects_across_processes(tmp_path):
    subjects = {"red disc": "toy", "blue disc": "toy", "third": "dog"}
    spec = {name: {"path": name.replace(" ", "_"), "class": cls} for name, cls in subjects.items()}
    for i, name in enumerate(subjects): _subject(tmp_path / name.replace(" ", "_"), n=2, seed=i)
    (tmp_path / "dreambooth.json").write_text(json.dumps(spec))
    # two CPU processes joined by accelerate over gloo (accelerate's own CPU launcher needs MPI)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "dti_lens.cli", "train-many",
                          "dreambooth.json", "--model", "tiny:sd15", "--output-dir", "out", "--steps", "2", "--batch-size", "2"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    trained = re.findall(r"^trained (.+?):", res.stdout, flags=re.M)
    assert sorted(trained) == sorted(subjects), res.stdout  # each subject once, by one of the processes
    for name in subjects: assert (tmp_path / "out" / name / "learned_embeds.safetensors").exists()


def test_vmf_demo_prints_true_and_fitted_kappas_and_writes_figure(tmp_path):
    res = run("vmf-demo", "--out", "figs", "--n", "2000", "--d", "48", "--k", "5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = re.findall(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+(-?[\d.]+)%$", res.stdout, flags=re.M)
    assert len(rows) == 5, res.stdout
    for _, true, fitted, _ in rows: assert abs(float(fitted) / float(true) - 1) < 0.15, res.stdout
    html = (tmp_path / "figs" / "vmf_mixture.html").read_text()
    assert "plotly" in html and "fitted kappa" in html


def test_vmf_demo_rejects_bad_sizes(tmp_path):
    res = run("vmf-demo", "--k", "0", cwd=tmp_path)
    assert res.returncode == 2 and "argument --k: must be an int >= 1" in one_error_line(res, "vmf-demo")
    assert not (tmp_path / "demo_output").exists()


def test_adjust_fixes_a_file_in_its_own_format(tmp_path):
    from dti_lens.embeddings import read_embeddings
    from dti_lens.zoo import tiny_pipeline
    from dti_lens.encoders import text_encoders
    from dti_lens.tea import tea_adjust, anchor_vector
    enc = text_encoders(tiny_pipeline("sd15"))["text_encoder"]
    big = 8 * torch.randn(2, 32)
    save_file({"<cat>": big}, tmp_path / "cat.safetensors")
    res = run("adjust", "cat.safetensors", "fixed.safetensors", "--model", "tiny:sd15", "--anchor", "cat", "--alpha", "0.3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "wrote fixed.safetensors: text_encoder alpha 0.3, beta 1\n"
    fixed = read_embeddings(tmp_path / "fixed.safetensors")
    assert fixed.kind == "diffusers" and fixed.token == "<cat>"
    expected = tea_adjust(big.double(), anchor_vector(enc, "cat"), 0.3, 1.0).float()
    assert torch.allclose(fixed.vectors[None], expected, atol=1e-6)
    res = run("adjust", "cat.safetensors", "auto.safetensors", "--model", "tiny:sd15", "--anchor", "cat", "--auto", cwd=tmp_path)
    assert res.returncode == 0 and "alpha" in res.stdout, res.stderr
    res = run("adjust", "cat.safetensors", "bad.safetensors", "--model", "tiny:sd15", "--anchor", "cat", "--alpha", "2", cwd=tmp_path)
    assert res.returncode == 2 and "argument --alpha: must be a number in [0, 1]; got '2'" in one_error_line(res, "adjust")
    assert not (tmp_path / "bad.safetensors").exists()


# ---- every user mistake: exit code 2 and one line naming the argument, before any model loads ----

@pytest.fixture
def mistakes(tmp_path, monkeypatch):
    "A working folder with images, a folder holding a run, a folder without embeddings, an embedding file."
    _subject(tmp_path / "imgs", n=2)
    (tmp_path / "held").mkdir(); (tmp_path / "held" / "learned_embeds.safetensors").write_bytes(b"x")
    (tmp_path / "empty").mkdir(); (tmp_path / "empty" / "notes.txt").write_text("no embedding here")
    save_file({"<cat>": torch.randn(1, 32)}, tmp_path / "cat.safetensors")
    (tmp_path / "bad_path.json").write_text(json.dumps({"dog": {"path": "nope", "class": "dog"}}))
    (tmp_path / "ok.json").write_text(json.dumps({"dog": {"path": "imgs", "class": "dog"}}))
    (tmp_path / "runs" / "dog").mkdir(parents=True); (tmp_path / "runs" / "dog" / "log.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    return tmp_path


TRAIN = ["train", "--model", "tiny:sd15", "--images", "imgs", "--token", "<disc>", "--init", "toy", "--output-dir", "out"]
ADJUST = ["adjust", "cat.safetensors", "fixed.safetensors", "--model", "tiny:sd15", "--anchor", "cat"]
MISTAKES = [  # (id, argv, what the one line must say)
    ("images-missing", ["train", *TRAIN[1:4], "nope", *TRAIN[5:]], "--images 'nope': no such folder"),
    ("images-file", ["train", *TRAIN[1:4], "cat.safetensors", *TRAIN[5:]], "--images 'cat.safetensors': is a file, not a folder"),
    ("json-missing", ["train-many", "missing.json", "--model", "tiny:sd15", "--output-dir", "runs"],
     "DREAMBOOTH_JSON 'missing.json': no such file"),
    ("json-path-missing", ["train-many", "bad_path.json", "--model", "tiny:sd15", "--output-dir", "runs"],
     "subject 'dog': 'path' 'nope' is not a folder"),
    ("many-held", ["train-many", "ok.json", "--model", "tiny:sd15", "--output-dir", "runs"],
     "subject 'dog': --output-dir 'runs/dog' holds a partial run (log.jsonl): pass --resume to continue it, --overwrite to replace it"),
    ("src-missing", ["adjust", "nope.pt", "fixed.pt", *ADJUST[3:]], "SRC: no embedding file or folder at nope.pt"),
    ("src-before-model", ["adjust", "nope.pt", "fixed.pt", "--model", "no_such_folder", "--anchor", "cat"],
     "SRC: no embedding file or folder at nope.pt"),
    ("src-no-embedding", ["adjust", "empty", "fixed", *ADJUST[3:]], "no embedding file in empty"),
    ("out-suffix", ["adjust", "cat.safetensors", "fixed.pt", *ADJUST[3:]], "OUT must end with .safetensors"),
    ("auto-and-alpha", [*ADJUST, "--auto", "--alpha", "0.3"], "--auto chooses alpha and beta itself"),
    ("adjust-beta", [*ADJUST, "--beta", "0"], "argument --beta: must be a number > 0; got '0'"),
    ("file-missing", ["diagnose", "nope.pt", "--model", "tiny:sd15"], "FILE 'nope.pt': no such file or folder"),
    ("file-before-model", ["diagnose", "nope.pt", "--model", "no_such_folder"], "FILE 'nope.pt': no such file or folder"),
    ("file-no-embedding", ["diagnose", "empty", "--model", "tiny:sd15"], "no embedding file in empty"),
    ("probe-steps", ["diagnose", "cat.safetensors", "--model", "tiny:sd15", "--probe-steps", "0"],
     "argument --probe-steps: must be an int >= 1"),
    ("model-folder", ["diagnose", "cat.safetensors", "--model", "no_such_folder"],
     "--model 'no_such_folder' is not a folder; pass a pipeline folder"),
    ("tiny-kind", [*TRAIN[:2], "tiny:sd99", *TRAIN[3:]], "--model 'tiny:sd99': the tiny zoo pipelines are tiny:"),
    ("train-model-folder", [*TRAIN[:2], "./no_such_folder", *TRAIN[3:]], "--model './no_such_folder' is not a folder"),
    ("run-held", [*TRAIN[:-1], "held"], "--output-dir 'held' holds a finished run (learned_embeds.safetensors): pass --resume to "
                                        "continue it, --overwrite to replace it, or another --output-dir"),
    ("resume-and-overwrite", [*TRAIN, "--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
    ("validation-prompt", [*TRAIN, "--validation-prompt", "a photo"],
     "argument --validation-prompt: must hold '{}' once, where the token goes"),
    ("steps", [*TRAIN, "--steps", "0"], "argument --steps: must be an int >= 1; got '0'"),
    ("lr", [*TRAIN, "--lr", "nan"], "argument --lr: must be a number > 0; got 'nan'"),
    ("train-beta", [*TRAIN, "--beta", "1"], "argument --beta: must be a number in [0, 1); got '1'"),
    ("checkpoint-every", [*TRAIN, "--checkpoint-every", "0"], "argument --checkpoint-every: must be an int >= 1"),
    ("crop-center", [*TRAIN, "--crop", "center"], "--crops must be 1 with --crop 'center'; got 4"),
    ("method", [*TRAIN, "--method", "sgd"], "argument --method: invalid choice: 'sgd'"),
    ("required", TRAIN[:5], "the following arguments are required: --token, --init, --output-dir"),
    ("demo-steps", ["demo", "--steps", "0"], "argument --steps: must be an int >= 1"),
]
if not torch.cuda.is_available(): MISTAKES.append(("cuda", [*TRAIN, "--device", "cuda"], "--device 'cuda': CUDA is not available here"))


@pytest.mark.parametrize("argv, says", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line_and_exit_code_2(argv, says, mistakes, capsys):
    from dti_lens.cli import main
    with pytest.raises(SystemExit) as e: main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in one_error_line(err, argv[0]), err
    assert not (mistakes / "out").exists() and not (mistakes / "fixed").exists() and not (mistakes / "fixed.pt").exists()


def test_mistakes_in_a_real_shell(mistakes):
    "The console script itself: one line, exit code 2, also where the libraries log (an unreachable hub id)."
    res = run(*TRAIN[:-1], "held", cwd=mistakes)
    assert res.returncode == 2 and "pass --resume to continue it, --overwrite to replace it" in one_error_line(res, "train")
    res = run(*ADJUST[:3], "--model", "nobody/no-such-model", "--anchor", "cat", cwd=mistakes, env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2, res.stderr
    assert "--model 'nobody/no-such-model' cannot be loaded" in one_error_line(res, "adjust") and "pass a local pipeline folder" in res.stderr
    res = run(cwd=mistakes)
    assert res.returncode == 2 and "give a command: demo, train, train-many, adjust, diagnose, evaluate, vmf-demo" in one_error_line(res, None)


def test_overwrite_replaces_a_run(tmp_path):
    _subject(tmp_path / "imgs", n=2)
    args = ["train", "--model", "tiny:sd15", "--images", "imgs", "--token", "<disc>", "--init", "toy", "--batch-size", "1", "--output-dir", "out"]
    assert run(*args, "--steps", "2", cwd=tmp_path).returncode == 0
    res = run(*args, "--steps", "1", cwd=tmp_path)
    assert res.returncode == 2 and "holds a finished run" in one_error_line(res, "train")
    res = run(*args, "--steps", "1", "--overwrite", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len((tmp_path / "out" / "log.jsonl").read_text().splitlines()) == 1


def test_warnings_are_one_line_each(tmp_path):
    _subject(tmp_path / "imgs", n=2)
    res = run("train", "--model", "tiny:sd15", "--images", "imgs", "--token", "<disc>", "--init", "teddybear", "--steps", "1",
              "--batch-size", "1", "--output-dir", "out", "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 2 and all(l.startswith("dti-lens: warning: ") for l in lines), res.stderr
    assert "resume: no checkpoint in 'out'; training starts at step 0" in lines[0]
    n = int(re.search(r"init 'teddybear' is (\d+) word pieces: the token gets \1 vectors", lines[1])[1])
    assert f"text_encoder: {n} vector(s)" in res.stdout


def test_a_reader_that_leaves_ends_the_command_quietly(mistakes, monkeypatch, capsys):
    import dti_lens.cli as cli
    def broken(a): print("first line"); raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(cli, "_run", broken)
    with pytest.raises(SystemExit) as e: cli.main(["vmf-demo"])
    assert e.value.code == 141 and capsys.readouterr().err == ""


# ---- Ctrl-C ----

def test_ctrl_c_says_where_resume_continues_and_exits_130(tmp_path):
    _subject(tmp_path / "imgs", n=2)
    args = ["train", "--model", "tiny:sd15", "--images", "imgs", "--token", "<disc>", "--init", "toy", "--batch-size", "1",
            "--checkpoint-every", "1", "--output-dir", "out"]
    # SIGINT at its default in the child, so Python turns it into KeyboardInterrupt even under a shell that ignores it
    proc = subprocess.Popen([str(EXE), *args, "--steps", "100000"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt, deadline = tmp_path / "out" / "checkpoint.pt", time.time() + 600
    try:
        while not ckpt.exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(1.0)  # a few more steps
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None: proc.kill()
    step = torch.load(ckpt, weights_only=True)["step"]
    assert proc.returncode == 130, err
    assert err.splitlines() == [f"dti-lens train: interrupted: --resume continues from the checkpoint at step {step} "
                                f"({Path('out') / 'checkpoint.pt'})"], err
    res = run(*args, "--steps", str(step + 1), "--resume", cwd=tmp_path)  # what the line says works
    assert res.returncode == 0, res.stderr
    assert [json.loads(l)["step"] for l in (tmp_path / "out" / "log.jsonl").read_text().splitlines()] == list(range(1, step + 2))


def test_ctrl_c_before_a_checkpoint_and_in_train_many(mistakes, monkeypatch, capsys):
    import dti_lens.cli as cli
    def interrupt(*a, **kw): raise KeyboardInterrupt
    monkeypatch.setattr(cli, "train_dti", interrupt); monkeypatch.setattr(cli, "train_many", interrupt)
    with pytest.raises(SystemExit) as e: cli.main([*TRAIN, "--checkpoint-every", "50"])
    assert e.value.code == 130
    assert capsys.readouterr().err == ("dti-lens train: interrupted before the first checkpoint (due at step 50, --checkpoint-every): "
                                       "nothing to resume; start again\n")
    (mistakes / "two.json").write_text(json.dumps({"dog": {"path": "imgs", "class": "dog"}, "cat": {"path": "imgs", "class": "cat"}}))
    torch.save({"step": 7}, mistakes / "runs" / "dog" / "checkpoint.pt")
    with pytest.raises(SystemExit) as e: cli.main(["train-many", "two.json", "--model", "tiny:sd15", "--output-dir", "runs", "--resume"])
    assert e.value.code == 130
    dog = Path("runs") / "dog" / "checkpoint.pt"
    assert capsys.readouterr().err.splitlines() == [
        f"dti-lens: warning: resume: no checkpoint in {str(Path('runs') / 'cat')!r}; training starts at step 0",  # checked before the model loads
        f"dti-lens train-many: interrupted: --resume continues dog from step 7 ({dog}); no checkpoint yet for cat "
        "(the first is due at step 100, --checkpoint-every)"]


# ---- adjust on a trained SDXL output folder ----

def tea64(v, c, alpha, beta):
    "TEA written out in float64: rescale v and c to beta |c|, slerp v toward c by alpha."
    v, c = v.double(), c.double()
    u, a = v / v.norm(dim=1, keepdim=True), c / c.norm()
    theta = torch.arccos((u @ a).clamp(-1, 1))[:, None]
    return beta * c.norm() * (torch.sin((1 - alpha) * theta) * u + torch.sin(alpha * theta) * a) / torch.sin(theta)


def test_adjust_an_sdxl_output_folder(tmp_path):
    from dti_lens.train import train_dti, load_pipeline
    from dti_lens.encoders import text_encoders
    train_dti("tiny:sdxl", _subject(tmp_path / "imgs", n=2), "<disc>", "toy", method="ti", steps=2, batch_size=1,
              output_dir=tmp_path / "run", progress=False)
    res = run("adjust", "run", "fixed", "--model", "tiny:sdxl", "--anchor", "dog", "--alpha", "0.3", "--beta", "1.5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    both = "text_encoder alpha 0.3, beta 1.5; text_encoder_2 alpha 0.3, beta 1.5"
    assert res.stdout.splitlines() == [f"wrote {Path('fixed') / 'disc.safetensors'}: {both}",
                                       f"wrote {Path('fixed') / 'learned_embeds.safetensors'}: text_encoder alpha 0.3, beta 1.5",
                                       f"wrote {Path('fixed') / 'learned_embeds_2.safetensors'}: text_encoder_2 alpha 0.3, beta 1.5"]
    encs = text_encoders(load_pipeline("tiny:sdxl"))
    anchor = {}
    for name, e in encs.items():
        ids = e.tokenizer("dog", add_special_tokens=False).input_ids
        assert len(ids) == 1
        anchor[name] = e.table[ids[0]].detach()
    files = {"learned_embeds.safetensors": {"<disc>": "text_encoder"}, "learned_embeds_2.safetensors": {"<disc>": "text_encoder_2"},
             "disc.safetensors": {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}}
    for file, keys in files.items():
        before, after = load_file(tmp_path / "run" / file), load_file(tmp_path / "fixed" / file)
        assert after.keys() == before.keys()
        for key, name in keys.items():
            expected = tea64(before[key], anchor[name], 0.3, 1.5)
            assert after[key].dtype == before[key].dtype and after[key].shape == before[key].shape
            assert torch.allclose(after[key].double(), expected, atol=1e-6, rtol=1e-5), (file, key)
            assert torch.allclose(after[key].double().norm(dim=1), 1.5 * anchor[name].double().norm(), rtol=1e-5)
        with safe_open(str(tmp_path / "fixed" / file), "pt") as f: meta = f.metadata()
        assert meta["tea_anchor"] == "dog" and meta["tea_auto"] == "false" and meta["method"] == "ti"
        assert json.loads(meta["tea_alpha"]) == {n: 0.3 for n in set(keys.values())}
        assert json.loads(meta["tea_beta"]) == {n: 1.5 for n in set(keys.values())}


# ---- diagnose ----

def test_diagnose_a_run_folder_and_an_a1111_file(tmp_path):
    from dti_lens.train import train_dti
    train_dti("tiny:sd15", _subject(tmp_path / "imgs", n=2), "<disc>", "toy", steps=2, batch_size=1, output_dir=tmp_path / "run",
              progress=False)
    res = run("diagnose", "run", "--model", "tiny:sd15", "--probe-steps", "20", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("learned_embeds.safetensors, text_encoder, token '<disc>', vector 1 of 1\nnorm ")
    assert "nearest by cosine" in res.stdout and "position recoverable" in res.stdout
    report = tmp_path / "run.diagnosis.html"  # default: FILE's name, in the current folder
    assert res.stdout.endswith(f"report written to {report.name}\n") and report.read_text().startswith("<!doctype html>")
    assert "How to read this" in report.read_text() and "Plotly.newPlot" in report.read_text()
    toy = load_file(tmp_path / "run" / "learned_embeds.safetensors")["<disc>"][0]
    torch.save({"string_to_param": {"*": torch.stack([6 * toy, toy])}, "name": "wild"}, tmp_path / "wild.pt")
    res = run("diagnose", "wild.pt", "--model", "tiny:sd15", "--all", "--html", "reports/wild.html", "--probe-steps", "20", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    labels = re.findall(r"^wild\.pt, text_encoder, token 'wild', vector (\d) of 2\nnorm ([\d.]+) = ([\d.]+) x m\*", res.stdout, re.M)
    assert [l[0] for l in labels] == ["1", "2"], res.stdout
    assert abs(float(labels[0][1]) / float(labels[1][1]) - 6) < 0.05 and float(labels[1][2]) == 1.0  # DTI's row is at m*
    page = (tmp_path / "reports" / "wild.html").read_text()
    assert page.count("<section>") == 2 and "vector 2 of 2" in page
    torch.save({"string_to_param": {"*": torch.randn(1, 7)}}, tmp_path / "narrow.pt")
    res = run("diagnose", "narrow.pt", "--model", "tiny:sd15", cwd=tmp_path)
    assert res.returncode == 2 and "holds rows of width 7" in one_error_line(res, "diagnose") and "widths {'text_encoder': 32}" in res.stderr


# ---- --help and --version ----

def test_version_and_train_many_help(tmp_path):
    import dti_lens
    res = run("--version", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout == f"dti-lens {dti_lens.__version__}\n"
    res = run("train-many", "--help", cwd=tmp_path)
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for said in ('"path"', '"images"', '"class"', '"initialization"', "vMF prior's mean (DTI App. D.2)", "prior ", "template ",
                 "Relative paths resolve against the JSON file's folder, then the working folder",
                 "the subjects are split across the processes", "(default 100 steps)"):
        assert said in text, said
    from dti_lens.cli import parser, commands
    for command, sp in commands(parser()).items():  # every flag but -h states its default, or is required, positional or a switch
        for a in sp._actions:
            if a.dest == "help": continue
            switch, required = isinstance(a, argparse._StoreTrueAction), a.required or not a.option_strings
            assert a.help and (switch or required or "default" in a.help), (command, a.dest, a.help)


def test_an_sdxl_file_on_a_one_encoder_model_diagnoses_clip_l_and_says_so(tmp_path):
    "The same rule as load_embeddings (embeddings._plan): clip_l only, and a warning that clip_g is left out."
    from dti_lens.cli import _rows_by_encoder
    from dti_lens.embeddings import save_embeddings, read_embeddings
    rows = {"text_encoder": torch.randn(1, 32), "text_encoder_2": torch.randn(1, 40)}
    single = read_embeddings(save_embeddings(tmp_path, "<dog>", rows)["sdxl_single"])
    with pytest.warns(UserWarning, match="its clip_g rows are not diagnosed"):
        plan = _rows_by_encoder([single], {"text_encoder": 32})
    assert [(name, torch.equal(r, rows["text_encoder"])) for _, name, r in plan] == [("text_encoder", True)]

"""The docs: saved outputs that need no network, figures that a real browser draws offline, the docs configuration.

Quarto cannot run here, so the offline check renders each notebook with nbconvert (its outputs as Quarto would
take them: a figure's text/html) inside a page whose header is the one `nbs/_quarto.yml` gives every docs page,
next to the plotly.min.js that the docs processing writes (`doc_procs` in pyproject.toml, nbs/99_api.ipynb), and
loads it in headless Chromium with the network blocked (`dti_lens.report.browser_check`, nbs/17_report.ipynb).
"""
import html, json, os, re, shutil, subprocess, sys, tomllib, types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
NOTEBOOKS = sorted(NBS.glob("[0-9]*.ipynb"))
PLOTLY = "application/vnd.plotly.v1+json"
KERNEL = "dti_lens"  # the kernel every notebook declares and tools/setup.sh registers
# a resource fetched from another host: a script, stylesheet, image or frame, or an ES module import
NETWORK = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//"""
                     r"""|\bimport\s*\(?\s*["'](?:https?:)?//""", re.I)
REFRESH = "re-run it with `.venv/bin/python tools/refresh_outputs.py nbs/{}` (the renderer is set in nbs/99_api.ipynb)"


def load(path): return json.loads(path.read_text(encoding="utf-8"))
def text(x): return "".join(x) if isinstance(x, list) else x if isinstance(x, str) else json.dumps(x)


def outputs(nb):
    "(cell index, output) for every saved output."
    return [(i, o) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" for o in c.get("outputs", [])]


def figures(nb): return [(i, o["data"]) for i, o in outputs(nb) if PLOTLY in o.get("data", {})]


def newplot_traces(src:str) -> list:
    "The trace count of each `Plotly.newPlot(id, data, ...)` call in the HTML `src`."
    dec = json.JSONDecoder()
    return [len(dec.raw_decode(src, m.end())[0]) for m in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', src)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_saved_outputs_need_no_network(path):
    hits = [(i, m[0][:80]) for i, o in outputs(load(path))
            for m in NETWORK.finditer("".join(map(text, o.get("data", {}).values())) + text(o.get("text", "")))]
    assert not hits, (f"{path.name}: saved outputs load from the network (cell, match): {hits[:5]}; "
                      + REFRESH.format(path.name))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_figures_are_saved_for_jupyterlab_and_quarto(path):
    "Each figure: plotly's mimetype (JupyterLab) and text/html with the same traces and without plotly.js (Quarto)."
    from plotly.offline import get_plotlyjs
    bundle_start = get_plotlyjs()[:200]
    for i, data in figures(load(path)):
        fig_html = text(data.get("text/html", ""))
        assert "Plotly.newPlot" in fig_html, f"{path.name}, cell {i}: a figure without HTML; " + REFRESH.format(path.name)
        assert bundle_start not in fig_html, f"{path.name}, cell {i}: a figure saved with its own copy of plotly.js"
        traces = newplot_traces(fig_html)
        assert traces == [len(data[PLOTLY]["data"])], (path.name, i, traces, len(data[PLOTLY]["data"]))


def test_some_notebooks_have_figures():
    assert sum(bool(figures(load(p))) for p in NOTEBOOKS) >= 6


def docs_header() -> str:
    "The header `nbs/_quarto.yml` puts on every docs page."
    return yaml.safe_load((NBS / "_quarto.yml").read_text())["format"]["html"]["include-in-header"]["text"]


def doc_processor():
    "The processors pyproject.toml's `doc_procs` names, as nbdev imports them."
    from nbdev.config import import_obj
    procs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["nbdev"]["doc_procs"].split()
    return [import_obj(p) for p in procs]


def write_docs_resources(folder:Path, monkeypatch):
    "Run the doc processors as `nbdev-proc-nbs` does, with `folder` as the project root: they write into folder/_proc."
    import nbdev.config
    monkeypatch.setattr(nbdev.config, "get_config", lambda *a, **k: types.SimpleNamespace(config_path=folder))
    for proc in doc_processor():
        p = proc(types.SimpleNamespace(cells=[]))
        p.begin()
    return folder / "_proc"


def test_docs_ship_plotlyjs_once(tmp_path, monkeypatch):
    from plotly.offline import get_plotlyjs
    quarto = yaml.safe_load((NBS / "_quarto.yml").read_text())
    assert "plotly.min.js" in quarto["project"]["resources"]  # Quarto copies it into _docs/
    assert '<script src="plotly.min.js"></script>' in docs_header()
    proc = write_docs_resources(tmp_path, monkeypatch)
    assert (proc / "plotly.min.js").read_text(encoding="utf-8") == get_plotlyjs()


def test_sidebar_is_what_nbdev_docs_writes():
    "nbdev-docs rewrites nbs/sidebar.yml (custom_sidebar = false): the committed file must be what it writes."
    out = subprocess.run([Path(sys.executable).parent / "nbdev-sidebar", "--printit"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert (NBS / "sidebar.yml").read_text() == out[:-1], "run .venv/bin/nbdev-sidebar and commit nbs/sidebar.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_declares_the_project_kernel(path):
    spec = load(path)["metadata"].get("kernelspec", {})
    assert spec.get("name") == KERNEL, f"{path.name} declares kernel {spec.get('name')!r}, not {KERNEL!r}"
    assert f"--name {KERNEL}" in (ROOT / "tools" / "setup.sh").read_text()


def test_jupyterlab_renders_plotly_mimetype():
    "The plotly package's JupyterLab extension, which draws the mimetype, is installed and enabled."
    jupyter = Path(sys.executable).parent / "jupyter"
    if not jupyter.exists(): pytest.skip("JupyterLab is not installed (the dev extra installs it)")
    r = subprocess.run([jupyter, "labextension", "list"], capture_output=True, text=True)
    listing = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout + r.stderr)  # without the colours
    assert re.search(r"jupyterlab-plotly v\S+ enabled\s+OK", listing), listing


FAKE_AMD = ("<script>window.define = function () { throw new Error('an AMD loader took plotly.js'); };"
            " window.define.amd = {};</script>")
# After load, per figure: the traces plotly was given, and those visible that have no calcdata or no drawn layer
# of their kind (SVG traces `g.trace`; heatmap `g.hm`, image `g.im`, table `g.table`; WebGL traces a gl-canvas).
TRACE_CHECK = """<script>window.addEventListener("load", () => setTimeout(() => {
  const layer = {table: ".table", heatmap: ".hm", image: ".im", scattergl: ".gl-canvas", splom: ".gl-canvas"};
  const out = [...document.querySelectorAll(".plotly-graph-div")].map(gd => {
    const full = gd._fullData || [], calc = gd.calcdata || [], need = {};
    full.forEach(t => { if (t.visible === true) { const k = layer[t.type] || ".trace"; need[k] = (need[k] || 0) + 1; } });
    const missing = full.filter((t, i) => t.visible === true && !(calc[i] && calc[i].length)).map(t => t.type)
      .concat(Object.entries(need).filter(([k, n]) => gd.querySelectorAll(k).length < (k === ".gl-canvas" ? 1 : n))
                                  .map(([k, n]) => k + " x" + n));
    return {id: gd.id, given: (gd.data || []).length, missing: missing};
  });
  const pre = document.createElement("pre"); pre.id = "dti-docs-check"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 0));</script>"""


def render_page(path:Path, folder:Path, monkeypatch) -> Path:
    "`path` as a docs page in `folder`: the docs header and plotly.js, the outputs as nbconvert renders them."
    from nbconvert import HTMLExporter
    proc = write_docs_resources(folder, monkeypatch)
    shutil.copy(proc / "plotly.min.js", folder / "plotly.min.js")
    body, _ = HTMLExporter(template_name="basic").from_filename(str(path))
    # FAKE_AMD stands for require.js on the page: the header must still give plotly.js a global `Plotly`
    page = folder / path.with_suffix(".html").name
    page.write_text(f'<!doctype html><html><head><meta charset="utf-8">{FAKE_AMD}{docs_header()}</head>'
                    f"<body>{body}{TRACE_CHECK}</body></html>", encoding="utf-8")
    return page


def traces_drawn(report, page:Path, tmp:Path) -> list:
    "TRACE_CHECK's result: the page loaded once more in headless Chromium (report's flags: no host resolves)."
    r = subprocess.run([report.find_chromium(), *report.BROWSER_FLAGS, f"--user-data-dir={tmp / 'profile'}",
                        "--window-size=1100,2400", "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="dti-docs-check">(.*?)</pre>', r.stdout, re.S)
    assert m, f"the page's trace check did not run: {r.stderr[-1500:]}"
    return json.loads(html.unescape(m[1]))


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if figures(load(p))], ids=lambda p: p.name)
def test_docs_page_draws_every_figure_offline(path, tmp_path, monkeypatch):
    report = pytest.importorskip("dti_lens.report", reason="the browser check lives in dti_lens.report (17_report)")
    pytest.importorskip("nbconvert", reason="nbconvert renders the page (the dev extra's jupyterlab installs it)")
    if report.find_chromium() is None: pytest.skip("headless Chromium not found: apt-get install chromium")
    planned = [len(data[PLOTLY]["data"]) for _, data in figures(load(path))]
    page = render_page(path, tmp_path, monkeypatch)
    r = report.browser_check(page)  # the network log, console errors, which figures plotly drew
    assert r["returncode"] == 0 and not (r["requests"] or r["network"] or r["errors"]), (
        f"{path.name}: requests {r['requests'][:3]}, network {r['network'][:3]}, errors {r['errors'][:3]}; "
        + REFRESH.format(path.name))
    drawn = [f["id"] for f in r["figures"] if f["drawn"]]
    assert len(drawn) == len(r["figures"]) == len(planned), (
        f"{path.name}: {len(drawn)} of {len(planned)} figures drawn offline; " + REFRESH.format(path.name))
    check = traces_drawn(report, page, tmp_path)
    assert [f["given"] for f in check] == planned, (path.name, check)
    missing = [f for f in check if f["missing"]]
    assert not missing, f"{path.name}: traces not drawn: {missing}"


def free_port() -> int:
    import socket
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def test_jupyterlab_draws_saved_figures(tmp_path):
    "JupyterLab, opened on a notebook, draws each saved figure from plotly's mimetype (jp-RenderedPlotly), offline."
    import time, urllib.request
    report = pytest.importorskip("dti_lens.report", reason="the browser flags live in dti_lens.report (17_report)")
    jupyter = Path(sys.executable).parent / "jupyter"
    if not jupyter.exists(): pytest.skip("JupyterLab is not installed (the dev extra installs it)")
    if report.find_chromium() is None: pytest.skip("headless Chromium not found: apt-get install chromium")
    path = NBS / "04_geometry.ipynb"  # tables, bars, scatter and WebGL scatter
    n, port = len(figures(load(path))), free_port()
    served = tmp_path / "served"  # a copy: JupyterLab writes checkpoints beside what it opens
    served.mkdir(); shutil.copy(path, served / path.name)
    root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    server = subprocess.Popen([jupyter, "lab", "--no-browser", f"--port={port}", "--ServerApp.token=",
                               "--ServerApp.password=", f"--ServerApp.root_dir={served}",
                               f"--LabApp.workspaces_dir={tmp_path}", *root],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/lab", timeout=2); break
            except OSError: time.sleep(0.5)
        # report's flags, but with the local server reachable: no other host resolves
        flags = [f for f in report.BROWSER_FLAGS if not f.startswith("--host-resolver-rules")]
        flags.append("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
        r = subprocess.run([report.find_chromium(), *flags, f"--user-data-dir={tmp_path / 'profile'}",
                            "--window-size=1400,3000", "--virtual-time-budget=60000", "--dump-dom",
                            f"http://127.0.0.1:{port}/lab/tree/{path.name}"],
                           capture_output=True, text=True, timeout=300)
    finally:
        server.terminate(); server.wait(30)
    drawn = r.stdout.count("jp-RenderedPlotly")
    assert drawn == n, f"JupyterLab drew {drawn} of the {n} figures of {path.name} from plotly's mimetype"

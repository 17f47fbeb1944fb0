"""The demo report in a real browser: headless Chromium loads it offline and draws every plotly figure.

`dti_lens.report.browser_check` drives Debian's `chromium` (network blocked, fresh profile). Skipped where Chromium
is absent; `.ci/run` installs it when CI runs as root.
"""
import pytest

from dti_lens.data import synthetic_subject
from dti_lens.diagnose import angle_figure, diagnose
from dti_lens.report import browser_check, find_chromium, report_norm_figure, training_report, write_report
from dti_lens.train import train_dti
from dti_lens.zoo import tiny_pipeline

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="headless Chromium not found: apt-get install chromium chromium-driver")
PROMPTS = ["a photo of a {}"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    "A short DTI and TI run on the tiny SD 1.5 pipeline, their diagnoses, the report written to disk and its figures."
    images, results, diagnoses = synthetic_subject(4, 64, seed=0), {}, {}
    for method in ("dti", "ti"):
        pipe = tiny_pipeline("sd15")
        results[method] = r = train_dti(pipe, images, "<disc>", "toy", method=method, steps=3, seed=0,
                                        validation_prompts=PROMPTS, progress=False)
        diagnoses[method] = diagnose(r.embeddings["text_encoder"][0], pipe.text_encoder, pipe.tokenizer,
                                     probe_kw=dict(steps=30, n_tokens=128))
    page = training_report(results, images, diagnoses, model="tiny:sd15", prompts=PROMPTS)
    path = write_report(tmp_path_factory.mktemp("report") / "report.html", page)
    # the figures in page order: |e| per step, then per run the residual angles and the position probe
    figures = [report_norm_figure(results)] + [f for d in diagnoses.values() for f in (angle_figure(d), d.probe.figure)]
    return path, page, figures


def test_demo_report_renders_offline(demo):
    path, _, figures = demo
    check = browser_check(path)
    assert check["returncode"] == 0
    assert check["requests"] == [] and check["network"] == [], "the page must not touch the network"
    assert check["errors"] == [], check["errors"]
    drawn = check["figures"]
    assert len(drawn) == len(figures), f"{len(drawn)} figure divs in the page, {len(figures)} figures built"
    for f, fig in zip(drawn, figures):
        assert f["drawn"] and f["size"], f"plotly did not draw figure {f['id']}: {f}"
        assert f["traces"] >= len(fig.data), f"{f['traces']} traces drawn for {len(fig.data)}: {f}"
        assert f["size"][1] == f["planned"][1] and f["size"][0] > 200, f"figure drawn at {f['size']}: {f}"
    assert check["ok"]


def test_check_fails_without_plotly_js(demo, tmp_path):
    "The check can fail: the same page with its plotly.js cut out draws nothing and says why."
    from plotly.offline import get_plotlyjs
    path, page, figures = demo
    broken = write_report(tmp_path / "broken.html", page.replace(get_plotlyjs(), ""))
    check = browser_check(broken)
    assert not check["ok"]
    assert [f["traces"] for f in check["figures"]] == [0] * len(figures)
    assert any("Plotly is not defined" in e for e in check["errors"]), check["errors"]


def test_check_catches_a_cdn(tmp_path):
    "A page that loads plotly.js from a CDN fails offline, and the blocked request is reported."
    import plotly.graph_objects as go
    page = tmp_path / "cdn.html"
    page.write_text("<!doctype html><title>cdn</title>"
                    + go.Figure(go.Scatter(y=[1, 2])).to_html(full_html=False, include_plotlyjs="cdn"))
    check = browser_check(page)
    assert not check["ok"]
    assert check["network"] and all(u.startswith("https://cdn.plot.ly/") for u in check["network"])
    assert check["requests"] and all(u.startswith("https://cdn.plot.ly/") for u in check["requests"])

"""report.html: a run's and a comparison's results as one self-contained page, checked as text and
in a real browser (headless Chromium: no console errors, no network request, a non-blank page)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest

from fedmmkt_strategy.reporting.report import NOT_RECORDED, REPORT_FILE, ReportError, markdown_to_html, write_report

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
#: Chromium's own connections (updates, sync, field trials) are refused on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLIENTS = [(11, 0, "image", "cnn"), (12, 1, "image", "resnet"), (13, 2, "text", "gru"), (14, 3, "text", "bow")]


def _client(node: int, partition: int, modality: str, arch: str, rnd: int, server: bool) -> dict:
    row = {
        "round": rnd,
        "node_id": node,
        "partition_id": partition,
        "modality": modality,
        "architecture": arch,
        "acc_global": round(0.3 + 0.05 * rnd + 0.01 * partition, 4),
        "acc_local": 0.8,
        "train_loss": 1.0 / rnd,
        "bytes_up": 236_000,
        "bytes_down": 560_000,
    }
    return row | ({"alpha_mean": 0.5 + (0.1 if partition % 2 else -0.1) * rnd / 3} if server else {})


def _server(rnd: int) -> dict:
    """The server figures a fedmmkt round records (a subset of each kind)."""
    figures = {
        "discard_rate": 0.01 * rnd,
        "confused_discard_rate": 0.02 * rnd,
        "clean_discard_rate": 0.005 * rnd,
        "kept": 380 - rnd,
        "vote_depicted_agreement": 0.6,
        "prompt_depicted_agreement_kept": 0.58,
        "confused_vote_depicted_agreement": 0.55,
        "confused_prompt_depicted_agreement_kept": 0.5,
        "clean_vote_depicted_agreement": 0.66,
        "clean_prompt_depicted_agreement_kept": 0.7,
        "confirmed_share": 0.7,
        "image_alpha_entropy": 0.9,
        "image_alpha_max": 0.4,
        "text_alpha_entropy": 0.95,
        "text_alpha_max": 0.35,
        "time_synthesis_s": 20.0,
        "time_query_s": 1.0,
        "time_labvote_s": 0.1,
        "time_round_s": 30.0,
    }
    if rnd % 2 == 0:
        figures |= {"gen_acc": 0.6, "fid": math.nan, "gen_acc_confused": 0.5, "gen_acc_clean": 0.7}
        figures |= {"per_class_gen_acc": [0.1, 0.5, 0.9, 1.0], "time_t2i_eval_s": 9.0}
    return figures


def make_metrics(strategy: str = "fedmmkt", rounds: int = 3, failures: list | None = None) -> dict:
    """A small metrics.json of `results.RunRecorder`'s shape; a baseline records no server figures
    but its phase times."""
    server = strategy not in ("local", "fedavg")
    history = []
    if server:
        history.append({"round": 0, "summary": {}, "server": {"gen_acc": 0.62, "fid": 13.7}, "clients": []})
    for rnd in range(1, rounds + 1):
        summary = {"image_acc_global_mean": 0.3 + 0.05 * rnd, "text_acc_global_mean": 0.35 + 0.05 * rnd}
        summary |= {"bytes_up_per_client_mean": 236_000.0, "bytes_down_per_client_mean": 560_000.0}
        history.append(
            {
                "round": rnd,
                "summary": summary,
                "server": _server(rnd) if server else {"time_round_s": 10.0, "time_distill_phase_s": 7.0},
                "clients": [_client(*c, rnd, server) for c in CLIENTS],
            }
        )
    config = {"strategy": strategy, "num-server-rounds": rounds, "seed": 0, "client-layout": "image:cnn,text:gru"}
    return {
        "strategy": strategy,
        "config": config,
        "wall_time_s": 123.4,
        "rounds": history,
        "failures": failures or [],
        "resumes": [],
    }


def write_run(folder: Path, metrics: dict, grids: tuple[int, ...] = ()) -> Path:
    """A results folder: metrics.json (NaN written as json does) and sample grids of some rounds."""
    from PIL import Image

    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if grids:
        (folder / "samples").mkdir()
        for rnd in grids:
            Image.new("RGB", (40, 80), (200, 40 * rnd % 255, 60)).save(folder / "samples" / f"round_{rnd:03d}.png")
    return folder


def section(page: str, anchor: str) -> str:
    """The HTML of one section of the report."""
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert match, f"no section {anchor}"
    return match.group(1)


def test_a_run_report_has_every_section_inline_and_nothing_to_fetch(tmp_path):
    run = write_run(tmp_path / "20261202-fedmmkt", make_metrics(), grids=(0, 2, 3))
    path = write_report(run)
    page = path.read_text()
    assert path == run / REPORT_FILE
    for anchor in ("overview", "config", "accuracy", "t2i", "samples", "labvote", "weights", "failures", "cost"):
        assert f'href="#{anchor}"' in page and NOT_RECORDED not in section(page, anchor)
    assert section(page, "samples").count("data:image/png;base64,") == 3
    assert "round 0 (pre-trained)" in section(page, "samples")
    assert "p1 resnet" in section(page, "accuracy") and "0.460" in section(page, "accuracy")  # round 3, p1
    assert "0.620 → 0.600" in section(page, "overview")  # GenAcc from round 0 to the last evaluated round
    assert "–" in section(page, "t2i")  # the NaN FID of round 2 is a dash, not "nan"
    assert not re.search(r">\s*nan\s*<", page, re.I)
    assert not re.search(r"<script|https?://|<link rel=\"stylesheet|@import|url\(", page)


def test_a_baseline_report_says_what_the_strategy_does_not_record(tmp_path):
    page = write_report(write_run(tmp_path / "run", make_metrics("local"))).read_text()
    for anchor in ("t2i", "samples", "labvote", "weights"):
        assert NOT_RECORDED in section(page, anchor), anchor
    assert "data:image/png" in section(page, "accuracy")
    assert "distill phase" in section(page, "cost")


def test_failures_name_the_client_and_their_text_is_escaped(tmp_path):
    failures = [{"round": 2, "phase": "train", "node_id": 13, "reason": "<b>timeout</b> & gone"}]
    page = write_report(write_run(tmp_path / "run", make_metrics(failures=failures))).read_text()
    failed = section(page, "failures")
    assert "p2 gru" in failed and "&lt;b&gt;timeout&lt;/b&gt; &amp; gone" in failed
    assert "<b>timeout" not in page


def test_a_run_with_few_figures_draws_without_warnings(tmp_path):
    metrics = make_metrics()
    for rnd in metrics["rounds"]:  # no per-group LabVote figures, no byte counts, no weights
        rnd["server"] = {k: v for k, v in rnd["server"].items() if "confused" not in k and "clean" not in k}
        rnd["summary"] = {k: v for k, v in rnd["summary"].items() if not k.startswith("bytes")}
        for client in rnd["clients"]:
            client.pop("alpha_mean", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        page = write_report(write_run(tmp_path / "run", metrics)).read_text()
    assert "data:image/png" in section(page, "labvote") and NOT_RECORDED in section(page, "weights")


def test_a_folder_without_results_is_refused_by_name(tmp_path):
    with pytest.raises(ReportError, match="metrics.json"):
        write_report(tmp_path)


def test_markdown_tables_become_html_tables():
    text = "Header with `code` & <b>.\n\n| a | b |\n|---|---|\n| x | 0.5 ± 0.1 |\n"
    html = markdown_to_html(text)
    assert "<p>Header with <code>code</code> &amp; &lt;b&gt;.</p>" in html
    assert "<th>a</th><th>b</th>" in html and '<td class="n">0.5 ± 0.1</td>' in html


def test_a_comparison_report_holds_its_table_plots_and_runs(tmp_path):
    folder = tmp_path / "comparison"
    shutil.copytree(REPO / "docs" / "results" / "full", folder)
    write_run(folder / "runs" / "fedmmkt-seed0", make_metrics())
    page = write_report(folder).read_text()
    for variant in json.loads((folder / "comparison.json").read_text()):
        assert f"<td>{variant}</td>" in section(page, "table")
    assert section(page, "plots").count("data:image/png;base64,") == len(list(folder.glob("*.png")))
    assert 'href="runs/fedmmkt-seed0/report.html"' in section(page, "runs")
    assert (folder / "runs" / "fedmmkt-seed0" / REPORT_FILE).is_file()  # written where missing


def test_the_cli_writes_the_report_and_prints_its_path(tmp_path, capsys):
    from fedmmkt_strategy.cli.main import main

    run = write_run(tmp_path / "run", make_metrics())
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / REPORT_FILE)
    assert main(["report", str(tmp_path / "empty")]) == 1


def test_a_run_ends_with_its_report(tmp_path):
    from fedmmkt_strategy.runs.inprocess import run_inprocess

    tiny = {
        "strategy": "local",
        "client-layout": "image:cnn,text:bow",
        "pool-size": 240,
        "test-per-class": 1,
        "local-epochs": 1,
        "client-warmup-epochs": 1,
        "node-settle": 0.0,
        "num-server-rounds": 1,
        "results-dir": str(tmp_path),
        "trackers": "none",
    }
    run = run_inprocess(tiny, num_nodes=2)
    assert "<h1>FedMMKT run report" in (run / REPORT_FILE).read_text()


def test_a_report_that_fails_never_fails_the_run(tmp_path, monkeypatch):
    from fedmmkt_strategy.runs import runner

    def broken(folder: Path) -> Path:
        raise RuntimeError("disk full")

    monkeypatch.setattr(runner, "write_report", broken)
    runner.write_run_report(tmp_path)  # logs a warning, raises nothing


# -- in a real browser -------------------------------------------------------------------------


def artifacts_dir() -> Path:
    """Where screenshots are kept for a person to look at: $FEDMMKT_TEST_ARTIFACTS or test-artifacts/."""
    folder = Path(os.environ.get("FEDMMKT_TEST_ARTIFACTS", REPO / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Playwright (the system's chromium: no browser download); skipped
    where either is missing, except under FEDMMKT_REQUIRE_BROWSER=1 (CI), where that fails."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not CHROMIUM.exists():
        why = "Playwright for Python" if sync_playwright is None else f"Chromium ({CHROMIUM})"
        if os.environ.get("FEDMMKT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{why} is missing and FEDMMKT_REQUIRE_BROWSER=1")
        pytest.skip(f"{why} is not installed")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def load_and_shoot(browser, report: Path, screenshot: Path) -> list[str]:
    """Open the report from a file:// URL, keep a 1280 px wide screenshot of the whole page and
    return what went wrong: console errors, page errors and any request that leaves the file."""
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else problems.append(f"fetch {r.url}"))
    page.goto(report.as_uri(), wait_until="load")
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return problems


def assert_not_blank(screenshot: Path) -> None:
    """A page that rendered: a good share of non-white pixels and many colours (figures, text)."""
    from PIL import Image

    image = Image.open(screenshot).convert("RGB")
    pixels = image.width * image.height
    white = sum(count for count, colour in image.getcolors(pixels) if min(colour) > 245)
    assert 1 - white / pixels > 0.2, f"{screenshot} is mostly blank"
    assert len(image.getcolors(pixels)) > 200, f"{screenshot} has too few colours"


@pytest.mark.parametrize("kind", ["run", "baseline-run", "comparison"])
def test_the_report_renders_in_headless_chromium(browser, tmp_path, kind):
    if kind == "comparison":
        folder = tmp_path / "comparison"
        shutil.copytree(REPO / "docs" / "results" / "full", folder)
    else:
        failures = [{"round": 1, "phase": "query", "node_id": 12, "reason": "timed out"}]
        metrics = make_metrics("local") if kind == "baseline-run" else make_metrics(failures=failures)
        folder = write_run(tmp_path / kind, metrics, grids=() if kind == "baseline-run" else (0, 2, 3))
    screenshot = artifacts_dir() / f"report-{kind}.png"
    assert load_and_shoot(browser, write_report(folder), screenshot) == []
    assert_not_blank(screenshot)

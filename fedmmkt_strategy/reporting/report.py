"""`report.html`: a run's or a comparison's results as one page a person opens in a browser.

metrics.json holds everything but is read by programs; the report shows it: the config, client
accuracy per round, the T2I model's scores and sample grids over the rounds, LabVote's and the
contrastive weights' diagnostics, failures, time and bytes. The page is self-contained (images
inline as data URIs, one CSS block, no script, font or other fetch), so it opens offline, can be
attached to an issue, and never touches the network. Sections a strategy does not record (a
baseline has no LabVote) say so instead of disappearing, so two reports read alike.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

from fedmmkt_strategy.reporting import report_figures as figures
from fedmmkt_strategy.reporting.report_figures import GROUPS, Rounds, client_series, is_number, series

REPORT_FILE = "report.html"
NOT_RECORDED = "not recorded by this strategy"
#: Comparison plots written by `compare.write_outputs`, in reading order, with what they show.
PLOT_CAPTIONS = {
    "comparison.png": "Final-round accuracy and GenAcc per variant (error bars: std over seeds).",
    "accuracy_rounds.png": "Client accuracy per round, mean over seeds (band: one std).",
    "gen_acc_rounds.png": "T2I GenAcc per round, overall and on the confused and clean classes.",
}
CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
       margin: 0; background: #f4f6f9; }
header { background: #1f3a5f; color: #fff; padding: 18px 32px 10px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
.meta { margin: 0; color: #cfdbeb; }
nav ul { list-style: none; padding: 0; margin: 10px 0 0; display: flex; flex-wrap: wrap; gap: 6px 18px; }
nav a { color: #fff; text-decoration: none; border-bottom: 1px dotted #9fb6d3; }
main { max-width: 1240px; margin: 0 auto; padding: 8px 32px 32px; }
section { background: #fff; border-radius: 6px; padding: 4px 20px 16px; margin: 18px 0;
          box-shadow: 0 1px 3px rgba(0, 0, 0, .08); }
h2 { font-size: 19px; border-bottom: 2px solid #e3e8ef; padding-bottom: 4px; }
img { max-width: 100%; }
figure { margin: 10px 0; }
figcaption { color: #5a6475; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e3e8ef; text-align: left; white-space: nowrap; }
th { background: #eef2f7; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafbfd; }
.scroll { overflow-x: auto; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #eef2f7; border-radius: 6px; padding: 8px 14px; min-width: 130px; }
.card b { display: block; font-size: 22px; }
.card span { color: #5a6475; font-size: 12px; }
.grids { display: flex; gap: 14px; overflow-x: auto; align-items: flex-start; }
.grids img { height: 560px; max-width: none; image-rendering: pixelated; }
.na { color: #8a93a3; font-style: italic; }
.settings { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); grid-auto-flow: dense;
             gap: 2px 18px; margin: 8px 0; font-size: 13px; }
.settings div { display: flex; gap: 8px; border-bottom: 1px solid #eef2f7; padding: 2px 0; min-width: 0; }
.settings .wide { grid-column: span 2; }
.settings .full { grid-column: 1 / -1; }
.settings dt { color: #5a6475; white-space: nowrap; }
.settings dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
summary { cursor: pointer; color: #1f3a5f; margin-top: 6px; }
code { background: #eef2f7; padding: 0 3px; border-radius: 3px; }
footer { text-align: center; color: #8a93a3; font-size: 12px; padding-bottom: 20px; }
"""


class ReportError(ValueError):
    """The folder holds neither a run (metrics.json) nor a comparison (comparison.json)."""


class Section(NamedTuple):
    """One part of the page: its anchor, its heading and its HTML body."""

    anchor: str
    title: str
    body: str


def write_report(folder: Path) -> Path:
    """Write ``<folder>/report.html`` for a run folder (it has metrics.json) or a comparison folder
    (it has comparison.json; the reports of the runs under its runs/ are written where missing)
    and return its path."""
    folder = Path(folder).expanduser()
    if (folder / "metrics.json").is_file():
        metrics = json.loads((folder / "metrics.json").read_text())
        text = run_report_html(metrics, folder)
    elif (folder / "comparison.json").is_file():
        text = comparison_report_html(folder)
    else:
        raise ReportError(
            f"{folder}: neither metrics.json (a run's results folder) nor comparison.json "
            "(a `fedmmkt compare` folder) is there"
        )
    path = folder / REPORT_FILE
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# -- small HTML pieces ---------------------------------------------------------------------------


def esc(value: Any) -> str:
    """Any value as HTML text."""
    return html.escape(str(value))


def fmt(value: Any, digits: int = 3) -> str:
    """A figure for a table cell: numbers rounded, missing or NaN values as a dash."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "–" if value is None else esc(value)
    if not math.isfinite(value):
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def duration(seconds: float) -> str:
    """Wall time as a person reads it: 382.5 -> '6 min 22 s'."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else (f"{minutes} min {secs} s" if minutes else f"{secs} s")


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """An HTML table; cells are HTML already (escaped by the caller through `esc` or `fmt`)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _cell(content: str) -> str:
    """A table cell; figures (including "0.3 ± 0.1" and the dash of a missing one) align right."""
    return f'<td class="n">{content}</td>' if _FIGURE.match(content) else f"<td>{content}</td>"


_FIGURE = re.compile(r"^(–|-?[\d.]+( ± [\d.]+)?)$")


def round_table(rounds: Rounds, rows: list[tuple[str, str, str, int, float]]) -> str:
    """A table with a row per figure and a column per round, so that many figures per round stay
    readable; `rows` are (name, "server" or "summary", key, digits, scale). Figures no round has
    are left out, and so are rounds with none of the figures."""

    def value(r: dict[str, Any], where: str, key: str, scale: float) -> float | None:
        found = r.get(where, {}).get(key)
        return found * scale if is_number(found) else None

    rows = [row for row in rows if series(rounds, row[1], row[2])[0]]
    used = [r for r in rounds if any(value(r, w, k, 1.0) is not None for _, w, k, _, _ in rows)]
    body = [[esc(name)] + [fmt(value(r, w, k, scale), d) for r in used] for name, w, k, d, scale in rows]
    return table([""] + [f"round {r['round']}" for r in used], body)


def image(uri: str | None, caption: str, alt: str) -> str:
    """A figure with its caption, or the note that nothing was recorded to draw."""
    if uri is None:
        return f'<p class="na">{esc(caption)}: {NOT_RECORDED}.</p>'
    return f'<figure><img src="{uri}" alt="{esc(alt)}"><figcaption>{esc(caption)}</figcaption></figure>'


def missing(what: str) -> str:
    return f'<p class="na">{esc(what)}: {NOT_RECORDED}.</p>'


def page(title: str, meta: list[str], sections: list[Section]) -> str:
    """The whole document: header with the run's identity, a list of the sections, the sections."""
    nav = "".join(f'<li><a href="#{s.anchor}">{esc(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{esc(title)}</title><style>{CSS}</style></head>'
        f'<body><header><h1>{esc(title)}</h1><p class="meta">{" · ".join(esc(m) for m in meta)}</p>'
        f"<nav><ul>{nav}</ul></nav></header><main>{body}</main>"
        "<footer>written by <code>fedmmkt report</code>; self-contained, no network access</footer>"
        "</body></html>\n"
    )


def markdown_to_html(text: str) -> str:
    """The markdown `compare.write_table` writes (paragraphs, pipe tables, `code`) as HTML."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
    parts = []
    for block in blocks:
        lines = block.splitlines()
        if all(line.startswith("|") for line in lines) and len(lines) >= 2:
            cells = [[_inline(c.strip()) for c in line.strip().strip("|").split("|")] for line in lines]
            parts.append(table(cells[0], [row for row in cells[2:]]))
        else:
            parts.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "".join(parts)


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))


# -- a run ---------------------------------------------------------------------------------------


def run_report_html(metrics: dict[str, Any], folder: Path) -> str:
    """The report of one run's metrics.json (its sample grids are read from `folder`/samples)."""
    rounds: Rounds = metrics.get("rounds", [])
    config = metrics.get("config", {})
    done = max((r["round"] for r in rounds), default=0)
    clients = {c.get("node_id") for r in rounds for c in r.get("clients", [])}
    meta = [
        f"strategy {metrics.get('strategy', '?')}",
        f"round {done} of {config.get('num-server-rounds', '?')}",
        f"{len(clients)} clients",
        f"wall time {duration(metrics.get('wall_time_s', 0.0))}",
        f"written {_mtime(folder / 'metrics.json')}",
        str(folder),
    ]
    if metrics.get("resumes"):
        meta.append(f"resumed {len(metrics['resumes'])}×")
    sections = [
        Section("overview", "Overview", overview_html(metrics)),
        Section("config", "Config", config_html(config)),
        Section("accuracy", "Client accuracy", accuracy_html(rounds)),
        Section("t2i", "T2I model: GenAcc and FID", t2i_html(rounds)),
        Section("samples", "Sample grids over the rounds", samples_html(folder / "samples")),
        Section("labvote", "LabVote", labvote_html(rounds)),
        Section("weights", "Contrastive weights", weights_html(rounds)),
        Section("failures", "Failures", failures_html(metrics)),
        Section("cost", "Time and bytes per round", cost_html(rounds)),
    ]
    return page(f"FedMMKT run report: {folder.name}", meta, sections)


def _mtime(path: Path) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))


def final_figures(rounds: Rounds) -> dict[str, float]:
    """The last measured value of the headline figures (per-modality accuracy, GenAcc, FID)."""
    keys = [("summary", f"{m}_acc_global_mean") for m in figures.modalities(rounds)]
    found = {key: series(rounds, where, key)[1] for where, key in keys + [("server", "gen_acc"), ("server", "fid")]}
    return {key: values[-1] for key, values in found.items() if values}


def overview_html(metrics: dict[str, Any]) -> str:
    """Headline cards: final accuracy per modality, GenAcc and FID (first -> last), failures."""
    rounds = metrics.get("rounds", [])
    cards = []
    for m in figures.modalities(rounds):
        xs, ys = series(rounds, "summary", f"{m}_acc_global_mean")
        if xs:
            cards.append((fmt(ys[-1]), f"{m} clients, mean accuracy (round {xs[-1]})"))
    for key, name, digits in (("gen_acc", "GenAcc", 3), ("fid", "domain FID", 1)):
        xs, ys = series(rounds, "server", key)
        if len(xs) > 1:
            cards.append((f"{fmt(ys[0], digits)} → {fmt(ys[-1], digits)}", f"{name}, round {xs[0]} → {xs[-1]}"))
        elif xs:
            cards.append((fmt(ys[0], digits), f"{name}, round {xs[0]}"))
    cards.append((str(len(metrics.get("failures", []))), "failed replies"))
    items = "".join(f'<div class="card"><b>{v}</b><span>{esc(c)}</span></div>' for v, c in cards)
    return f'<div class="cards">{items}</div>'


#: The settings a reader of a report asks for first; the rest of the config is one click away.
KEY_SETTINGS = (
    "strategy",
    "dataset",
    "client-layout",
    "seed",
    "num-server-rounds",
    "t2i-model",
    "synthetic-size",
    "labvote-beta",
    "labvote-class-weights",
    "t2i-pairs",
    "use-labvote",
    "use-contrastive-aggregation",
    "use-cross-attention",
    "use-t2i-update",
)


def config_html(config: dict[str, Any]) -> str:
    """The key settings, then every key of the run config (collapsed: it is long)."""
    if not config:
        return missing("run config")

    def settings(keys: Iterable[str]) -> str:
        items = []
        for key in (k for k in keys if k in config):
            value = config[key] if isinstance(config[key], str) and config[key] else json.dumps(config[key])
            size = len(key) + len(value)
            wide = ' class="full"' if size > 70 else ' class="wide"' if size > 36 else ""
            items.append(f"<div{wide}><dt>{esc(key)}</dt><dd>{esc(value)}</dd></div>")
        return f'<dl class="settings">{"".join(items)}</dl>'

    return settings(KEY_SETTINGS) + f"<details><summary>all {len(config)} keys</summary>{settings(config)}</details>"


def accuracy_html(rounds: Rounds) -> str:
    """The accuracy figure and a table: every client's global-test accuracy per round."""
    curves = client_series(rounds, "acc_global")
    if not curves:
        return missing("client accuracy")
    local = client_series(rounds, "acc_local")
    numbers = sorted({x for xs, _ in curves.values() for x in xs})
    rows = []
    for (modality, label), (xs, ys) in curves.items():
        by_round = dict(zip(xs, ys))
        last_local = local.get((modality, label), ([], []))[1]
        cells = [fmt(by_round.get(n)) for n in numbers] + [fmt(last_local[-1] if last_local else None)]
        rows.append([esc(label), esc(modality)] + cells)
    head = ["client", "modality"] + [f"round {n}" for n in numbers] + ["own test split, last round"]
    caption = "Accuracy on the global test set per round (clients: partition and architecture)"
    return image(figures.accuracy_figure(rounds), caption, "accuracy per round") + table(head, rows)


def t2i_html(rounds: Rounds) -> str:
    """GenAcc overall and per class group, domain FID, and GenAcc per class, per evaluated round."""
    if not series(rounds, "server", "gen_acc")[0]:
        return missing("T2I GenAcc and FID")
    rows = [
        ("GenAcc", "server", "gen_acc", 3, 1.0),
        ("GenAcc, confused classes", "server", "gen_acc_confused", 3, 1.0),
        ("GenAcc, clean classes", "server", "gen_acc_clean", 3, 1.0),
        ("domain FID", "server", "fid", 1, 1.0),
        ("CLIP score", "server", "clip_score", 3, 1.0),
    ]
    return (
        image(figures.t2i_figure(rounds), "GenAcc and domain FID per round (round 0: the pre-trained model)", "T2I")
        + round_table(rounds, rows)
        + image(figures.per_class_figure(rounds), "GenAcc per class and evaluated round", "GenAcc per class")
    )


def samples_html(samples: Path) -> str:
    """The sample grids of every evaluated round side by side (one row per class)."""
    grids = sorted(samples.glob("round_*.png")) if samples.is_dir() else []
    if not grids:
        return missing("sample grids")
    items = "".join(
        f'<figure><img src="{figures.file_data_uri(p)}" alt="samples {esc(p.stem)}">'
        f"<figcaption>{esc(_round_name(p.stem))}</figcaption></figure>"
        for p in grids
    )
    intro = "<p>What the T2I model draws from each class prompt: one row per class, in label order.</p>"
    return f'{intro}<div class="grids">{items}</div>'


def _round_name(stem: str) -> str:
    """``round_000`` -> "round 0 (pre-trained)", ``round_004`` -> "round 4"."""
    number = stem.rsplit("_", 1)[-1]
    if not number.isdigit():
        return stem
    return "round 0 (pre-trained)" if int(number) == 0 else f"round {int(number)}"


def labvote_html(rounds: Rounds) -> str:
    """Discard rate and vote-versus-prompt label accuracy on the confused and clean classes."""
    if not series(rounds, "server", "discard_rate")[0]:
        return missing("LabVote diagnostics")
    rows = [("kept samples", "server", "kept", 0, 1.0)]
    rows += [(f"discard rate, {name}", "server", f"{p}discard_rate", 3, 1.0) for p, name in GROUPS.items()]
    for prefix, name in GROUPS.items():
        rows += [
            (f"vote accuracy, {name}", "server", f"{prefix}vote_depicted_agreement", 3, 1.0),
            (f"prompt accuracy, {name}", "server", f"{prefix}prompt_depicted_agreement_kept", 3, 1.0),
        ]
    rows.append(("share of votes = prompt", "server", "confirmed_share", 3, 1.0))
    note = (
        "<p>Vote and prompt accuracy: how often the voted label, and the prompt's class, name what the image "
        "shows (as the reference classifier judges it), on the kept samples. A vote helps where it beats the "
        "prompt.</p>"
    )
    return image(figures.labvote_figure(rounds), "LabVote per round", "LabVote") + note + round_table(rounds, rows)


def weights_html(rounds: Rounds) -> str:
    """Contrastive aggregation weights: per-client means and the collapse watch."""
    if not client_series(rounds, "alpha_mean"):
        return missing("contrastive aggregation weights")
    caption = (
        "Contrastive weights per round: each client's mean weight (dotted: uniform), and per modality "
        "the weights' normalised entropy and the largest weight any client got"
    )
    return image(figures.weights_figure(rounds), caption, "contrastive weights")


def failures_html(metrics: dict[str, Any]) -> str:
    """Every failed reply (round, phase, which client, reason), and the resumes of the run."""
    failures = metrics.get("failures", [])
    names = {c.get("node_id"): figures.client_label(c) for r in metrics.get("rounds", []) for c in r.get("clients", [])}
    rows = [
        [fmt(f.get("round")), esc(f.get("phase", "")), esc(names.get(f.get("node_id"), f.get("node_id", "?")))]
        + [esc(f.get("reason", ""))]
        for f in failures
    ]
    parts = [table(["round", "phase", "client", "reason"], rows) if failures else "<p>No failures.</p>"]
    for resume in metrics.get("resumes", []):
        parts.append(f"<p>Resumed after round {esc(resume.get('after_round'))} at {esc(resume.get('at'))}.</p>")
    return "".join(parts)


def cost_html(rounds: Rounds) -> str:
    """Seconds per round by step and megabytes per client per round."""
    uri = figures.cost_figure(rounds)
    if uri is None:
        return missing("time and bytes per round")
    rows = [("round, s", "server", "time_round_s", 1, 1.0)]
    rows += [(f"{key[5:-2].replace('_', ' ')}, s", "server", key, 1, 1.0) for key in figures.time_keys(rounds)]
    rows += [
        ("MB up per client", "summary", "bytes_up_per_client_mean", 3, 1e-6),
        ("MB down per client", "summary", "bytes_down_per_client_mean", 3, 1e-6),
    ]
    return image(uri, "Time and bytes per round", "time and bytes") + round_table(rounds, rows)


# -- a comparison --------------------------------------------------------------------------------


def comparison_report_html(folder: Path) -> str:
    """The report of a `fedmmkt compare` folder: its table, its plots and its runs."""
    results = json.loads((folder / "comparison.json").read_text())
    seeds = sorted({r.get("seed") for runs in results.values() for r in runs if "seed" in r})
    meta = [f"{len(results)} variants", f"seeds {seeds}", f"written {_mtime(folder / 'comparison.json')}", str(folder)]
    table_md = folder / "table.md"
    table_body = markdown_to_html(table_md.read_text()) if table_md.is_file() else missing("table.md (not written yet)")
    sections = [
        Section("table", "Table", table_body),
        Section("plots", "Plots", comparison_plots_html(folder)),
        Section("runs", "Runs", comparison_runs_html(folder / "runs")),
    ]
    return page(f"FedMMKT comparison {folder.name}", meta, sections)


def comparison_plots_html(folder: Path) -> str:
    """Every PNG of the comparison folder, the known plots first."""
    known = [folder / name for name in PLOT_CAPTIONS if (folder / name).is_file()]
    others = sorted(p for p in folder.glob("*.png") if p.name not in PLOT_CAPTIONS)
    if not known + others:
        return '<p class="na">No plots in this folder.</p>'
    return "".join(image(figures.file_data_uri(p), PLOT_CAPTIONS.get(p.name, p.name), p.stem) for p in known + others)


def comparison_runs_html(runs: Path) -> str:
    """A line per run under runs/ with its final figures and a link to its own report
    (written here when the run has none yet)."""
    folders = sorted(p.parent for p in runs.glob("*/metrics.json")) if runs.is_dir() else []
    if not folders:
        return '<p class="na">No runs/ folder here (a merged or committed comparison keeps only its summary).</p>'
    rows = []
    for run in folders:
        metrics = json.loads((run / "metrics.json").read_text())
        if not (run / REPORT_FILE).is_file():
            write_report(run)
        final = final_figures(metrics.get("rounds", []))
        href = esc(quote(f"runs/{run.name}/{REPORT_FILE}"))
        rows.append(
            [f'<a href="{href}">{esc(run.name)}</a>', esc(metrics.get("strategy", "?"))]
            + [
                fmt(final.get(k), 1 if k == "fid" else 3)
                for k in ("image_acc_global_mean", "text_acc_global_mean", "gen_acc", "fid")
            ]
            + [esc(duration(metrics.get("wall_time_s", 0.0)))]
        )
    return table(["run", "strategy", "image acc", "text acc", "GenAcc", "domain FID", "wall"], rows)

"""The report of a run folder: `report.md`, a self-contained `report.html` (inline style, figures embedded as
base64 data: URIs, no external resource), the figures as PNG files under `plots/`, and `summary.json`.

One section per benchmark and configuration in the folder: accuracy with its 95% interval beside the score
QwQ-32B-Preview's release article published, the breakdowns, pass@k and majority vote, finish reasons,
completed against cut-off replies, token lengths, the weakness metrics, and the figures.
"""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwq.errors import InvalidRequestError
from qwq.eval.plots import accuracy_by_length, length_histogram
from qwq.eval.runner import CONFIG_FILE, SAMPLES_FILE, latest_records
from qwq.eval.summary import summarize

if TYPE_CHECKING:
    from qwq.tokenizer.tokenizer import Tokenizer

PUBLISHED_MODEL = "QwQ-32B-Preview"


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    summary: Path
    plots: list[Path]


def _equivalence(task: str) -> Callable[[str, str], bool]:
    """When two predictions are one answer, for the majority vote: the grader's judgement where it has one."""
    if task == "code":
        return str.__eq__
    from qwq.eval.grading import grade

    return lambda a, b: a == b or grade(a, b, task)


def summaries(out_dir: Path, tokenizer: Tokenizer | None = None) -> list[dict[str, Any]]:
    """One summary per (benchmark, configuration) logged in `out_dir`."""
    samples, configs = out_dir / SAMPLES_FILE, out_dir / CONFIG_FILE
    if not samples.is_file():
        raise InvalidRequestError(f"{out_dir}: no {SAMPLES_FILE} (is it the --out folder of a qwq eval run?)")
    about = json.loads(configs.read_text(encoding="utf-8")) if configs.is_file() else {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in latest_records(samples):
        groups[(record["benchmark"], record["config"])].append(record)
    found = []
    for (_, digest), records in sorted(groups.items()):
        entry = {**about.get(digest, {}), "hash": digest}
        task = entry.get("task") or records[0]["task"]
        found.append(summarize(records, entry, tokenizer=tokenizer, same=_equivalence(task)))
    return found


def write_report(out_dir: Path, tokenizer: Tokenizer | None = None) -> ReportFiles:
    found = summaries(out_dir, tokenizer)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    figures: list[list[tuple[str, Path, bytes]]] = []
    for summary in found:
        stem = f"{summary['benchmark']}-{summary['config']['hash']}"
        pictures = [
            ("Accuracy against thinking tokens", plot_dir / f"{stem}-accuracy.png", accuracy_by_length),
            ("Reply lengths", plot_dir / f"{stem}-lengths.png", length_histogram),
        ]
        made = []
        for caption, path, draw in pictures:
            data = draw(summary["points"], summary["title"])
            path.write_bytes(data)
            made.append((caption, path, data))
        figures.append(made)
    markdown = out_dir / "report.md"
    markdown.write_text(_markdown(found, figures, out_dir), encoding="utf-8")
    page = out_dir / "report.html"
    page.write_text(_html(found, figures), encoding="utf-8")
    summary_path = out_dir / "summary.json"
    plain = [{k: v for k, v in s.items() if k != "points"} for s in found]
    summary_path.write_text(json.dumps(plain, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return ReportFiles(markdown, page, summary_path, [path for made in figures for _, path, _ in made])


# -- the sections, as (heading, header row, rows) tables shared by both formats


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _accuracy(row: dict[str, Any]) -> str:
    return f"{row['accuracy']:.1f}% [{row['ci_low']:.1f}, {row['ci_high']:.1f}]"


def _published(summary: dict[str, Any]) -> str:
    return f"{summary['published']:.1f}%" if summary.get("published") is not None else "—"


def _setup(summary: dict[str, Any]) -> list[tuple[str, str]]:
    config = summary["config"]
    backend = config.get("backend", {})
    sampling = {k: v for k, v in (config.get("sampling") or {}).items() if v is not None}
    return [
        ("model", f"{backend.get('model', '?')} ({backend.get('backend', '?')})"),
        ("weights", f"{backend.get('quant') or backend.get('dtype') or 'as loaded by default'}"),
        ("sampling", ", ".join(f"{k}={v}" for k, v in sampling.items()) or "the model's defaults"),
        ("max tokens", str(config.get("max_tokens") or "the context's rest")),
        ("reasoning controls", ", ".join(f"{k}={v}" for k, v in (config.get("controls") or {}).items()) or "—"),
        ("system prompt", config.get("system") or "the template's default"),
        ("data", str(config.get("source", "?"))),
        ("configuration", f"{config.get('hash')} (prompt templates v{config.get('prompt_version')})"),
    ]


def _tables(summary: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = [
        (
            "Accuracy",
            ["benchmark", "items", "samples/item", "accuracy [95% CI]", f"{PUBLISHED_MODEL} (published)", "no answer"],
            [
                [
                    summary["title"],
                    str(summary["items"]),
                    str(summary["samples_per_item"]),
                    _accuracy(summary),
                    _published(summary),
                    f"{summary['no_answer']} ({summary['no_answer_rate']:.1f}%)",
                ]
            ],
        )
    ]
    for key, rows in summary["breakdowns"].items():
        body = [[row["name"], str(row["items"]), _accuracy(row)] for row in rows]
        tables.append((f"By {key}", [key, "items", "accuracy [95% CI]"], body))
    if summary["pass_at"]:
        header = [f"pass@{k}" for k in summary["pass_at"]] + (["maj@n"] if summary["majority"] is not None else [])
        row = [_pct(v) for v in summary["pass_at"].values()]
        row += [_pct(summary["majority"])] if summary["majority"] is not None else []
        tables.append(("Several samples (unbiased pass@k; majority vote over completed samples)", header, [row]))
    total = summary["samples"]
    reasons = [[reason, str(n), f"{100 * n / total:.1f}%"] for reason, n in summary["finish_reasons"].items()]
    tables.append(("Finish reasons", ["finish reason", "replies", "share"], reasons))
    completed, cut = summary["completed"], summary["cut_off"]
    tables.append(
        (
            "Completed against cut-off replies",
            ["replies", "count", "accuracy"],
            [
                ["completed (stop)", str(completed["replies"]), _pct(completed["accuracy"])],
                ["cut off (scored wrong)", str(cut["replies"]), f"{_pct(cut['accuracy_if_counted'])} if counted"],
            ],
        )
    )
    lengths = summary["lengths"]
    tables.append(
        (
            "Token lengths",
            ["part", "mean", "median", "p90", "max"],
            [[part, *(f"{lengths[part][s]:.0f}" for s in ("mean", "median", "p90", "max"))] for part in lengths],
        )
    )
    checked = summary["loop_checked"]
    tables.append(
        (
            "Weaknesses",
            ["metric", "value"],
            [
                ["loop rate", f"{_pct(summary['loop_rate'])} of {checked} replies checked"],
                ["no-answer rate", _pct(summary["no_answer_rate"])],
                ["language-mixing rate (>1% letters outside the prompt's script)", _pct(summary["mixing_rate"])],
                ["letters outside the prompt's script", _pct(summary["foreign_letter_share"])],
                ["mean thinking tokens", f"{summary['mean_thinking_tokens']:.0f}"],
            ],
        )
    )
    return tables


# -- Markdown


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(header), "| " + " | ".join("---" for _ in header) + " |", *map(line, rows)])


def _markdown(found: list[dict[str, Any]], figures: list[list[tuple[str, Path, bytes]]], out_dir: Path) -> str:
    parts = ["# qwq eval report", ""]
    for summary, made in zip(found, figures, strict=True):
        parts += [f"## {summary['title']}", ""]
        parts += [_md_table(["setting", "value"], [[k, v] for k, v in _setup(summary)]), ""]
        for heading, header, rows in _tables(summary):
            parts += [f"### {heading}", "", _md_table(header, rows), ""]
        for caption, path, _ in made:
            parts += [f"![{caption}]({path.relative_to(out_dir).as_posix()})", ""]
    return "\n".join(parts)


# -- HTML

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #1a202c; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.5rem; border-bottom: 2px solid #2b6cb0; } h3 { font-size: 1.05rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #cbd5e0; padding: 0.3rem 0.6rem; }
th { background: #edf2f7; text-align: left; } td { font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; } figcaption { color: #4a5568; font-size: 0.9rem; } img { max-width: 100%; }
"""


def _html_table(header: list[str], rows: list[list[str]], css_class: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(found: list[dict[str, Any]], figures: list[list[tuple[str, Path, bytes]]]) -> str:
    sections = []
    for summary, made in zip(found, figures, strict=True):
        parts = [f"<section><h2>{html.escape(summary['title'])}</h2>"]
        parts.append(_html_table(["setting", "value"], [[k, v] for k, v in _setup(summary)], "setup"))
        for heading, header, rows in _tables(summary):
            css = heading.split()[0].lower()
            parts.append(f"<h3>{html.escape(heading)}</h3>{_html_table(header, rows, css)}")
        for caption, _, data in made:
            source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            alt = html.escape(caption)
            parts.append(f'<figure><img src="{source}" alt="{alt}"><figcaption>{alt}</figcaption></figure>')
        sections.append("".join(parts) + "</section>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>qwq eval report</title><style>{_STYLE}</style></head>"
        f"<body><h1>qwq eval report</h1>{''.join(sections)}</body></html>\n"
    )

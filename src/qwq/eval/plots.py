"""The report's figures as PNG bytes (matplotlib's Agg backend: no display needed): accuracy against the
number of thinking tokens, and the distributions of reasoning and answer lengths."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

BINS = 8


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6.4, 3.6), dpi=100)
    return pyplot, figure, axes


def _png(pyplot: Any, figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    return buffer.getvalue()


def accuracy_by_length(points: Sequence[tuple[int, int, bool]], title: str) -> bytes:
    """Accuracy of the replies in each of up to BINS equal-count bins of thinking tokens (all completion tokens
    when the model writes no separate reasoning), with each bin's size."""
    thinking = any(r for r, _, _ in points)
    ordered = sorted(((r if thinking else r + a), ok) for r, a, ok in points)
    size = max(1, -(-len(ordered) // BINS))
    bins = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    centres = [sum(n for n, _ in b) / len(b) for b in bins]
    accuracy = [100 * sum(ok for _, ok in b) / len(b) for b in bins]
    pyplot, figure, axes = _figure()
    axes.plot(centres, accuracy, marker="o", color="#2b6cb0")
    for x, y, b in zip(centres, accuracy, bins, strict=True):
        axes.annotate(f"n={len(b)}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    axes.set_ylim(-5, 105)
    axes.set_xlabel("thinking tokens (bin mean)" if thinking else "completion tokens (bin mean)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(f"{title}: accuracy against length")
    axes.grid(alpha=0.3)
    return _png(pyplot, figure)


def length_histogram(points: Sequence[tuple[int, int, bool]], title: str) -> bytes:
    """How many replies had how many reasoning and answer tokens (one set of bins for both, so they compare)."""
    import numpy

    pyplot, figure, axes = _figure()
    reasoning = [r for r, _, _ in points]
    answer = [a for _, a, _ in points]
    bins = numpy.histogram_bin_edges(reasoning + answer if any(reasoning) else answer, bins=20)
    if any(reasoning):
        axes.hist(reasoning, bins=bins, alpha=0.6, label="reasoning", color="#2b6cb0")
    axes.hist(answer, bins=bins, alpha=0.6, label="answer", color="#dd6b20")
    axes.set_xlabel("tokens")
    axes.set_ylabel("replies")
    axes.set_title(f"{title}: reply lengths")
    axes.legend()
    axes.grid(alpha=0.3)
    return _png(pyplot, figure)

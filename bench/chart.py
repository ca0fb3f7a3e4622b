"""The benchmark figures as one PNG (matplotlib, Agg): each target beside its baseline, the
growth lines, and the service's memory while it ingests."""

from __future__ import annotations

import re
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, NullFormatter

from bench.common import BenchResult

MET, MISSED, BASELINE, NEUTRAL = "#2e7d32", "#c62828", "#9e9e9e", "#1565c0"
_TARGET = re.compile(r"(>=|<=)\s*([0-9][0-9,]*(?:\.[0-9]+)?)\s*(x\b)?")


def parse_target(target: str) -> tuple[str, float, bool] | None:
    """(">=" or "<=", the number, whether it is a ratio "Nx") of a target's first clause."""
    found = _TARGET.search(target)
    if not found:
        return None
    return found.group(1), float(found.group(2).replace(",", "")), bool(found.group(3))


def against_target(r: BenchResult) -> tuple[float, float | None] | None:
    """Ours and the baseline as a share of the target: 1 is the target, more is better."""
    parsed = parse_target(r.target)
    if parsed is None:
        return None
    op, goal, is_ratio = parsed

    def score(value: float | None) -> float | None:
        if value is None or value <= 0:
            return None
        return value / goal if op == ">=" else goal / value

    if is_ratio:  # "ours >= N x the baseline": the baseline is 1x by definition
        return (score(r.ratio) or 0.0), score(1.0)
    return (score(r.value) or 0.0), score(r.baseline_value)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    number = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    return f"{number} {unit}"


def _targets_panel(ax: Axes, results: Sequence[BenchResult]) -> None:
    rows = [(r, s) for r in results if (s := against_target(r)) is not None]
    labels: list[str] = []
    for i, (r, (ours, base)) in enumerate(reversed(rows)):
        y = i * 3
        colour = MET if r.met else MISSED
        ax.barh(y + 0.5, ours, height=0.9, color=colour)
        ax.text(ours * 1.05, y + 0.5, f"{_fmt(r.value, r.unit)}", va="center", fontsize=8)
        if base is not None:
            ax.barh(y - 0.5, base, height=0.9, color=BASELINE)
            shown = f"baseline {_fmt(r.baseline_value, r.unit)}" + (
                f" (ours / baseline = {r.ratio:.2g})" if r.ratio is not None else ""
            )
            ax.text(base * 1.05, y - 0.5, shown, va="center", fontsize=8)
        labels.append(textwrap.shorten(r.name, 58, placeholder="...") + f"\ntarget {r.target}")
    ax.set_yticks([i * 3 for i in range(len(rows))])
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("share of the target (log scale; 1 = the target, right of the line = met)")
    ax.set_title(
        "Targets: ours (green met, red missed) and the baseline measured in the same run (grey)"
    )
    if rows:
        low = min(min(s[0], s[1] or s[0]) for _, s in rows)
        high = max(max(s[0], s[1] or s[0]) for _, s in rows)
        ax.set_xlim(min(low, 0.5) / 2, max(high, 2.0) * 8)


def _growth(results: Sequence[BenchResult]) -> dict[str, list[tuple[float, float]]]:
    """series -> [(postings, seconds)], baselines as their own series."""
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in results:
        if not r.series or r.x is None:
            continue
        lines[r.series].append((r.x, r.value))
        if r.baseline_value:
            lines[f"{r.series.split(',')[0]} baseline: {r.baseline_name}"].append(
                (r.x, r.baseline_value)
            )
    return {name: sorted(points) for name, points in lines.items()}


def _seconds_panel(ax: Axes, lines: dict[str, list[tuple[float, float]]]) -> None:
    for name, points in lines.items():
        xs, ys = zip(*points, strict=True)
        style = "--" if " baseline: " in name else "-"
        ax.plot(xs, ys, style, marker="o", label=name)
        # Linear from the first point: a line that bends above it costs more per posting.
        ax.plot(
            [xs[0], xs[-1]],
            [ys[0], ys[0] * xs[-1] / xs[0]],
            ":",
            color="grey",
            linewidth=0.8,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _postings_axis(ax, lines)
    ax.set_xlabel("postings")
    ax.set_ylabel("seconds")
    ax.set_title("Seconds vs postings (dotted: linear from the first point)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)


def _rate_panel(ax: Axes, lines: dict[str, list[tuple[float, float]]]) -> None:
    for name, points in lines.items():
        xs = [x for x, _ in points]
        rates = [x / s for x, s in points]
        style = "--" if " baseline: " in name else "-"
        ax.plot(xs, rates, style, marker="o", label=name)
        for x, rate in zip(xs, rates, strict=True):
            ax.annotate(
                f"{rate / 1000:,.0f}k",
                (x, rate),
                textcoords="offset points",
                xytext=(0, 5),
                ha="center",
                fontsize=7,
            )
    ax.set_xscale("log")
    _postings_axis(ax, lines)
    top = max((x / s for points in lines.values() for x, s in points), default=1.0)
    ax.set_ylim(0, top * 1.5)  # room for the legend above the lines
    ax.yaxis.set_major_formatter(FuncFormatter(_postings))
    ax.set_xlabel("postings")
    ax.set_ylabel("postings per second")
    ax.set_title("Postings/s vs postings (flat: linear)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)


def _postings(value: float, _pos: int | None = None) -> str:
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value / 1e3:g}k" if value else "0"


def _postings_axis(ax: Axes, lines: dict[str, list[tuple[float, float]]]) -> None:
    """Ticks at the measured sizes, written 100k / 1M."""
    ax.set_xticks(sorted({x for points in lines.values() for x, _ in points}))
    ax.xaxis.set_major_formatter(FuncFormatter(_postings))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _memory_panel(ax: Axes, results: Sequence[BenchResult]) -> None:
    target = None
    for r in results:
        samples = r.extra.get("rss_samples")
        if samples:
            xs = [float(x) for x, _ in samples]
            ax.plot(xs, [mb for _, mb in samples], color=NEUTRAL, label="service RSS")
        # The service's own target (bench/memory.py), not the exporter's.
        if r.name.startswith("memory:") and (parsed := parse_target(r.target)):
            target = parsed[1]
    if target is not None:
        ax.axhline(target, color=MISSED, linestyle="--", label=f"target {target:.0f} MB")
        ax.set_ylim(0, target * 1.2)
    ax.set_xlabel("postings pushed (worker on)")
    ax.set_ylabel("MB")
    ax.set_title("Service memory while ingesting")
    ax.ticklabel_format(axis="x", style="plain")
    ax.xaxis.set_major_formatter(FuncFormatter(_postings))
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)


def draw(results: Sequence[BenchResult], path: Path, title: str) -> None:
    matplotlib.use("Agg")  # before pyplot: no display needed (CI, servers)
    import matplotlib.pyplot as plt

    targeted = [r for r in results if against_target(r) is not None]
    height = 4 + 0.55 * len(targeted)
    fig = plt.figure(figsize=(16, height + 5), dpi=100)
    grid = fig.add_gridspec(2, 3, height_ratios=[height, 5])
    _targets_panel(fig.add_subplot(grid[0, :]), targeted)
    lines = _growth(results)
    _seconds_panel(fig.add_subplot(grid[1, 0]), lines)
    _rate_panel(fig.add_subplot(grid[1, 1]), lines)
    _memory_panel(fig.add_subplot(grid[1, 2]), results)
    fig.suptitle(title, fontsize=10, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)

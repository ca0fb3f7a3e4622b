"""`python -m bench [--quick]`: run each benchmark module's `run(quick)` in turn, print every
figure beside its baseline, and write the report: the table (docs/BENCHMARKS.md for a full run,
bench/results/BENCHMARKS-quick.md for a quick one), the figures as JSON beside it
(benchmarks.json) and the chart (benchmarks.png)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import ROOT, BenchResult

MODULES = (
    "ingest",
    "reconcile",
    "bulk",
    "outbox",
    "scaleout",
    "memory",
    "orm_baseline",
    "growth",
    "exporter",
)
FULL_REPORT = ROOT / "docs" / "BENCHMARKS.md"
QUICK_REPORT = ROOT / "bench" / "results" / "BENCHMARKS-quick.md"
# Hand-written text (profiles, before/after, closing notes) kept verbatim from the existing
# report when it is written again.
NOTES_START, NOTES_END = "<!-- bench:notes -->", "<!-- /bench:notes -->"


def machine() -> str:
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.1f} GiB memory"
    except (ValueError, OSError, AttributeError):
        pass
    cpu = platform.processor() or platform.machine()
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}){memory}, {cpu}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def _met(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "-"}[met]


def table(results: list[BenchResult], *, notes: bool = True) -> str:
    header = "| figure | value | baseline | ratio | target | met? |"
    rule = "|---|---|---|---|---|---|"
    if notes:
        header, rule = header + " notes |", rule + "---|"
    lines = [header, rule]
    for r in results:
        baseline = (
            f"{_number(r.baseline_value)} {r.unit} ({r.baseline_name})" if r.baseline_name else "-"
        )
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        row = (
            f"| {r.name} | {_number(r.value)} {r.unit} | {baseline} | {ratio} | "
            f"{r.target or '-'} | {_met(r.met)} |"
        )
        lines.append(row + (f" {r.notes} |" if notes else ""))
    return "\n".join(lines)


def growth_table(results: list[BenchResult]) -> str:
    points = sorted((r for r in results if r.series and r.x), key=lambda r: (r.series, r.x or 0))
    lines = [
        "| line | postings | seconds | postings/s | baseline seconds | baseline postings/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in points:
        x = r.x or 0
        base = r.baseline_value
        lines.append(
            f"| {r.series} | {x:,.0f} | {r.value:,.2f} | {x / r.value:,.0f} | "
            f"{f'{base:,.2f}' if base else '-'} | {f'{x / base:,.0f}' if base else '-'} |"
        )
    return "\n".join(lines)


@dataclasses.dataclass
class Section:
    """One module's run, as kept in benchmarks.json."""

    name: str
    command: str
    when: str
    machine: str
    seconds: float
    results: list[BenchResult]
    failure: str | None = None

    def markdown(self) -> str:
        lines = [
            f"<!-- bench:{self.name} -->",
            f"## {self.name}",
            "",
            f"`{self.command}`, {self.when}, on {self.machine}; the module took "
            f"{self.seconds:.0f}s.",
            "",
        ]
        if self.results:
            lines += [table(self.results), ""]
        if self.failure:
            lines += [f"Failed: {self.failure}", ""]
        lines.append(f"<!-- /bench:{self.name} -->")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Section:
        results = [BenchResult(**r) for r in data.pop("results")]
        return cls(**data, results=results)


def sections(text: str) -> dict[str, str]:
    """The module sections of an existing report, so a partial run keeps the others."""
    found = {}
    for name in MODULES:
        start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
        if start in text and end in text:
            found[name] = text[text.index(start) : text.index(end) + len(end)]
    return found


def kept_notes(text: str) -> str | None:
    if NOTES_START in text and NOTES_END in text:
        return text[text.index(NOTES_START) : text.index(NOTES_END) + len(NOTES_END)]
    return None


def load_data(path: Path) -> dict[str, Section]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {name: Section.from_json(section) for name, section in data["modules"].items()}


def save_data(path: Path, data: dict[str, Section]) -> None:
    ordered = {name: data[name].to_json() for name in MODULES if name in data}
    path.write_text(json.dumps({"modules": ordered}, indent=1) + "\n")


def report(data: dict[str, Section], existing: str, chart: Path | None) -> str:
    """Every module's section (from the figures kept in benchmarks.json, else as the existing
    report had it), preceded by the targets at a glance and the growth lines."""
    old = sections(existing)
    results = [r for name in MODULES if name in data for r in data[name].results]
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`; `--only NAME` reruns one module and keeps "
        "the other sections). Everything runs on one machine: the load generator, the service "
        "(one uvicorn process with its worker, started as `make run` starts it; the scale-out "
        "benchmark runs API and worker processes apart) and "
        "PostgreSQL (the embedded one, or `LEDGERLINK_BENCH_DATABASE_URL`). Figures are "
        "measured, never asserted; a missed target is reported as missed. The machine is "
        "shared: each figure's notes say how much CPU other processes took during it.",
        "",
    ]
    if chart is not None:
        parts += [f"![The figures at a glance]({chart.name})", ""]
    targeted = [r for r in results if r.target]
    if targeted:
        parts += ["## Targets at a glance", "", table(targeted, notes=False), ""]
    if any(r.series for r in results):
        parts += [
            "## How cost grows",
            "",
            "Ingest: one continuous push into the service (bench/memory.py), the time until "
            "the given number of postings was acknowledged. Reconcile: a full reconcile of "
            "that many postings, every invoice dirty (bench/growth.py). Flat postings/s means "
            "the cost grows linearly.",
            "",
            growth_table(results),
            "",
        ]
    notes = kept_notes(existing)
    if notes:
        parts += [notes, ""]
    for name in MODULES:
        if name in data:
            parts += [data[name].markdown(), ""]
        elif name in old:
            parts += [old[name], ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (CI)")
    parser.add_argument("--only", choices=MODULES, action="append", help="run only these")
    parser.add_argument("--output", type=Path, help="where to write the table")
    parser.add_argument(
        "--redraw",
        action="store_true",
        help="run nothing: write the report and chart again from benchmarks.json "
        "(after editing the notes, say)",
    )
    args = parser.parse_args(argv)
    output: Path = args.output or (QUICK_REPORT if args.quick else FULL_REPORT)
    output.parent.mkdir(parents=True, exist_ok=True)
    data_path = output.with_name(output.stem.lower() + ".json")
    chart_path = output.with_name(output.stem.lower() + ".png")
    data = load_data(data_path)
    failed = False
    command = "make bench-quick" if args.quick else "make bench"
    if args.only:
        command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    for name in [] if args.redraw else args.only or MODULES:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                print(f"--- bench.{name}: not there yet, skipped")
                continue
            raise
        print(f"--- bench.{name} ({'quick' if args.quick else 'full'})", flush=True)
        figures: list[BenchResult] = []
        failure = None
        module_started = time.perf_counter()
        try:
            figures = module.run(args.quick)
        except Exception as exc:
            traceback.print_exc()
            failure = f"{type(exc).__name__}: {exc}"
            failed = True
        for r in figures:
            print(line(r), flush=True)
        data[name] = Section(
            name=name,
            command=command,
            when=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine(),
            seconds=time.perf_counter() - module_started,
            results=figures,
            failure=failure,
        )
    if not args.redraw:
        print(f"--- the run took {time.perf_counter() - started:.0f}s", flush=True)
    save_data(data_path, data)
    results = [r for name in MODULES if name in data for r in data[name].results]
    drawn: Path | None = chart_path
    try:
        from bench.chart import draw

        draw(results, chart_path, f"ledgerlink benchmarks ({command}), {machine()}")
    except Exception:
        traceback.print_exc()
        drawn, failed = None, True
    existing = output.read_text() if output.exists() else ""
    output.write_text(report(data, existing, drawn))
    for path in (output, data_path, *([drawn] if drawn else [])):
        print(f"--- wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 1 if failed else 0


def line(r: BenchResult) -> str:
    baseline = (
        f"   baseline {_number(r.baseline_value)} {r.unit} ({r.baseline_name})"
        if r.baseline_name
        else ""
    )
    ratio = f"   ratio {r.ratio:.2f}" if r.ratio is not None else ""
    target = f"   target {r.target}: {'met' if r.met else 'MISSED'}" if r.target else ""
    return f"{r.name}: {_number(r.value)} {r.unit}{baseline}{ratio}{target}"


if __name__ == "__main__":
    raise SystemExit(main())

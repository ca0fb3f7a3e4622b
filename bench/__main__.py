"""`python -m bench [--quick]`: run each benchmark module's `run(quick)` in turn, print every
figure beside its baseline, and write the table (docs/BENCHMARKS.md for a full run)."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import sys
import traceback
from pathlib import Path

from bench.common import ROOT, BenchResult

MODULES = ("ingest", "reconcile", "bulk")
FULL_REPORT = ROOT / "docs" / "BENCHMARKS.md"
QUICK_REPORT = ROOT / "bench" / "results" / "BENCHMARKS-quick.md"


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


def table(results: list[BenchResult]) -> str:
    lines = [
        "| figure | value | baseline | ratio | target | met? | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        baseline = (
            f"{_number(r.baseline_value)} {r.unit} ({r.baseline_name})" if r.baseline_name else "-"
        )
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        lines.append(
            f"| {r.name} | {_number(r.value)} {r.unit} | {baseline} | {ratio} | "
            f"{r.target or '-'} | {_met(r.met)} | {r.notes} |"
        )
    return "\n".join(lines)


def section(name: str, results: list[BenchResult], failure: str | None, command: str) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"<!-- bench:{name} -->",
        f"## {name}",
        "",
        f"`{command}`, {now}, on {machine()}.",
        "",
    ]
    if results:
        lines += [table(results), ""]
    if failure:
        lines += [f"Failed: {failure}", ""]
    lines.append(f"<!-- /bench:{name} -->")
    return "\n".join(lines)


def sections(text: str) -> dict[str, str]:
    """The module sections of an existing report, so a partial run keeps the others."""
    found = {}
    for name in MODULES:
        start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
        if start in text and end in text:
            found[name] = text[text.index(start) : text.index(end) + len(end)]
    return found


def report(fresh: dict[str, str], existing: str) -> str:
    kept = sections(existing)
    kept.update(fresh)
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`; `--only NAME` reruns one module and keeps "
        "the other sections). Everything runs on one machine: the load generator, the service "
        "(one uvicorn process with its worker, started as `make run` starts it) and "
        "PostgreSQL (the embedded one, or `LEDGERLINK_BENCH_DATABASE_URL`). Figures are "
        "measured, never asserted; a missed target is reported as missed.",
        "",
    ]
    parts += [kept[name] + "\n" for name in MODULES if name in kept]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (CI)")
    parser.add_argument("--only", choices=MODULES, action="append", help="run only these")
    parser.add_argument("--output", type=Path, help="where to write the table")
    args = parser.parse_args(argv)
    fresh: dict[str, str] = {}
    failed = False
    command = "make bench-quick" if args.quick else "make bench"
    if args.only:
        command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    for name in args.only or MODULES:
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
        try:
            figures = module.run(args.quick)
        except Exception as exc:
            traceback.print_exc()
            failure = f"{type(exc).__name__}: {exc}"
            failed = True
        for r in figures:
            print(line(r), flush=True)
        fresh[name] = section(name, figures, failure, command)
    output = args.output or (QUICK_REPORT if args.quick else FULL_REPORT)
    output.parent.mkdir(parents=True, exist_ok=True)
    existing = output.read_text() if output.exists() else ""
    output.write_text(report(fresh, existing))
    print(f"--- wrote {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
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

#!/usr/bin/env python3
"""Run every benchmarks/bench_*.py and write benchmarks/RESULTS.md and benchmarks/ratios.png.

Each script runs with `--json FILE` (the tables and targets it printed); RESULTS.md gets the
date, the machine and how busy it was meanwhile, a summary of every target, each script's
tables of medians and its full output; ratios.png charts every ratio against its target.
Both files are written only by this script. Needs matplotlib: pip install 'vhdtool[plot]'.
Exit 0 when every script ran (targets may be missed), 1 when one failed, 2 unusable setup.

Usage: python benchmarks/run_all.py [--dir SCRATCH] [--only NAME[,NAME]]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from vhdtool import __version__
from vhdtool.workflows.bench.machine import describe
from vhdtool.workflows.bench.plot import Bar, ratio_chart, require_matplotlib
from vhdtool.errors import VhdError

HERE = Path(__file__).resolve().parent
RESULTS, CHART = HERE / "RESULTS.md", HERE / "ratios.png"
MiB, GiB = 1024 * 1024, 1024**3


@dataclass
class Run:
    """One script's run: what it printed, its JSON (None if it failed) and the CPU used
    elsewhere on the machine meanwhile."""

    script: Path
    code: int
    seconds: float
    output: str
    shown: dict | None
    cpu_elsewhere: float  # share of the machine's CPU time not spent by the benchmark processes

    @property
    def name(self) -> str:
        return self.script.stem.removeprefix("bench_")

    @property
    def title(self) -> str:
        """The first line of the script's docstring."""
        doc = ast.get_docstring(ast.parse(self.script.read_text())) or self.script.name
        return doc.splitlines()[0]

    @property
    def checks(self) -> list[dict]:
        return self.shown["checks"] if self.shown else []


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent not idle (user, nice, system, irq, steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def our_cpu_seconds() -> float:
    """CPU seconds of this process and every descendant it (or they) waited for."""
    return sum(u.ru_utime + u.ru_stime
               for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def run_script(script: Path, scratch: Path | None) -> Run:
    """Run one script, echoing its output as it comes, and measure the CPU time the rest of
    the machine used meanwhile."""
    print(f"== {script.name}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vhdtool-run-all-") as tmp:
        report = Path(tmp) / "shown.json"
        argv = [sys.executable, str(script), "--json", str(report)] + (["--dir", str(scratch)] if scratch else [])
        busy, ours, start = busy_cpu_seconds(), our_cpu_seconds(), time.monotonic()
        output = []
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                print(line, end="", flush=True)
                output.append(line)
        seconds = time.monotonic() - start
        elsewhere = (busy_cpu_seconds() - busy) - (our_cpu_seconds() - ours)
        shown = json.loads(report.read_text()) if report.exists() else None
    share = max(0.0, elsewhere / (seconds * len(os.sched_getaffinity(0))))
    return Run(script, proc.returncode, seconds, "".join(output), shown, share)


def value_text(value: float, unit: str) -> str:
    return f"{value:.2f}x" if unit == "x" else f"{value:.2f} {unit}".rstrip()


def target_text(check: dict) -> str:
    unit = check["unit"]
    sign = ">=" if check["higher_is_better"] else "<="
    return f"{sign} {check['target']:.3g}{'x' if unit == 'x' else (' ' + unit if unit else '')}"


def summary_rows(runs: list[Run]) -> list[str]:
    """The summary table: every target of every script (the README quotes these lines)."""
    lines = ["| benchmark | measured | value | target | result |", "|---|---|---|---|---|"]
    for run in runs:
        for c in run.checks:
            lines.append(f"| {run.name} | {c['label']} | {value_text(c['value'], c['unit'])} | {target_text(c)} "
                         f"| {'met' if c['met'] else 'missed'} |")
    return lines


def machine_lines(machine: dict, runs: list[Run], load_before: list[float]) -> list[str]:
    tools = "; ".join(v or f"{k}: not installed" for k, v in machine["tools"].items())
    busiest = max(runs, key=lambda r: r.cpu_elsewhere)
    total = sum(r.cpu_elsewhere * r.seconds for r in runs) / max(1e-9, sum(r.seconds for r in runs))
    return [
        f"- CPU: {machine['cpu']}, {machine['cpus']} CPUs ({machine['usable_cpus']} usable); "
        f"memory {machine['memory_bytes'] / GiB:.1f} GiB",
        f"- Linux {machine['kernel']}, Python {machine['python']}, vhdtool {__version__}",
        f"- scratch filesystem: {machine['filesystem']}",
        f"- peers: {tools}",
        f"- load: 1-minute load average {load_before[0]:.2f} before the run, {machine['load_average'][0]:.2f} after; "
        f"CPU time spent outside the benchmark processes (other processes, kernel threads such as writeback) "
        f"while they ran: {total:.0%} of the machine overall, at most {busiest.cpu_elsewhere:.0%} "
        f"(during {busiest.script.name})",
    ]


def script_section(run: Run) -> list[str]:
    lines = [f"## {run.script.name}: {run.title}", "",
             f"Exit {run.code} in {run.seconds:.0f} s; CPU used elsewhere meanwhile: {run.cpu_elsewhere:.0%}.", ""]
    if run.shown is None:
        lines += ["**Failed: wrote no results.** Its output ends:", ""]
    for table in run.shown["tables"] if run.shown else []:
        lines += [f"**{table['title']}**", "", "| command | median s | min s | max s | peak RSS |",
                  "|---|---|---|---|---|"]
        for name, s in table["commands"].items():
            lines.append(f"| {name} | {s['median_s']:.3f} | {s['min_s']:.3f} | {s['max_s']:.3f} "
                         f"| {s['peak_rss_bytes'] / MiB:.1f} MiB |")
        lines.append("")
    tail = run.output.rstrip().splitlines()
    lines += ["<details><summary>full output</summary>", "", "```", *(tail if run.shown else tail[-30:]),
              "```", "", "</details>", ""]
    return lines


def write_results(runs: list[Run], machine: dict, load_before: list[float], commit: str) -> None:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Benchmark results", "",
             f"Written by `python benchmarks/run_all.py` on {when} at commit {commit}: do not edit by hand. "
             "Each script's own docstring says what it measures and why. Scripts run: "
             f"{', '.join(run.script.name for run in runs)}.", "",
             "## Machine", "", *machine_lines(machine, runs, load_before), "",
             "## Summary", "", "Every target of every benchmark (ratios: vhdtool's median wall time over the "
             "other tool's, below 1 is faster).", "", *summary_rows(runs), "", "![ratios](ratios.png)", ""]
    for run in runs:
        lines += script_section(run)
    RESULTS.write_text("\n".join(lines))


def chart(runs: list[Run]) -> None:
    bars = [Bar(f"{run.name}: {c['label']}", c["value"], c["target"], c["met"])
            for run in runs for c in run.checks if c["unit"] == "x"]
    ratio_chart(bars, "vhdtool benchmarks: measured ratios (bars) against their targets (black ticks)", CHART,
                xlabel="ratio (log scale); green: target met, red: missed")


def git_commit() -> str:
    done = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder for the scripts (default: temp)")
    parser.add_argument("--only", metavar="NAME[,NAME]", default=None,
                        help="run only these scripts (bench_NAME.py); RESULTS.md then holds only them")
    args = parser.parse_args()
    try:
        require_matplotlib("run_all.py")
        if args.dir is not None and not args.dir.is_dir():
            raise VhdError("is not a folder", args.dir)
    except VhdError as exc:
        print(f"run_all.py: error: {exc}", file=sys.stderr)
        return 2
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only is not None:
        wanted = set(args.only.split(","))
        unknown = wanted - {script.stem.removeprefix("bench_") for script in scripts}
        if unknown:
            print(f"run_all.py: error: no benchmark named {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        scripts = [script for script in scripts if script.stem.removeprefix("bench_") in wanted]
    load_before, commit = list(os.getloadavg()), git_commit()
    runs = [run_script(script, args.dir) for script in scripts]
    if git_commit() != commit:
        commit += f" (the checkout moved to {git_commit()} while the benchmarks ran)"
    peers = {name: shutil.which(name) for name in ("cp", "qemu-img")}
    write_results(runs, describe(args.dir or Path(tempfile.gettempdir()), peers), load_before, commit)
    chart(runs)
    print(f"wrote {RESULTS} and {CHART}")
    return 1 if any(run.shown is None for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())

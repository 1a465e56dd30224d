"""`vhdtool bench` results as a table for people and as JSON for scripts."""

from __future__ import annotations

from vhdtool.workflows.bench.cases import OURS
from vhdtool.workflows.bench.plot import Bar
from vhdtool.workflows.bench.run import BenchReport, Row
from vhdtool.units import format_size

MiB = 1024 * 1024
GiB = 1024 * MiB


def redacted_blob(report: BenchReport) -> str | None:
    from vhdtool.azure.location import redact

    return None if report.options.blob is None else redact(report.options.blob)


def as_json(report: BenchReport) -> dict[str, object]:
    o = report.options
    return {
        "size": o.size,
        "data_percent": o.data_percent,
        "runs": o.runs,
        "warmup_runs": 1,
        "blob": redacted_blob(report),
        "peers": report.peers,
        "machine": report.machine,
        "rss_meter": report.rss_meter,
        "images": report.images,
        "results": [row_json(row) for row in report.rows],
    }


def row_json(row: Row) -> dict[str, object]:
    head = {"image": row.image, "operation": row.operation, "tool": row.tool}
    if row.samples is None:
        return head | {"status": "missing", "missing_program": row.missing}
    return head | {"status": "measured"} | row.samples.as_dict() | {"ratio": row.ratio}


def table(report: BenchReport) -> list[str]:
    o, m = report.options, report.machine
    lines = [
        f"vhdtool bench: {format_size(o.size)} images, {o.data_percent:g}% random data, "
        f"median of {o.runs} run{'s' * (o.runs > 1)} after a warm-up",
        f"machine: {m['cpu']}, {m['usable_cpus']} CPUs, {m['memory_bytes'] / GiB:.1f} GiB RAM, "
        f"images on {m['filesystem']}, peak memory by {report.rss_meter}",
        "images: " + "; ".join(f"{i['kind']} {i['allocated'] / MiB:,.1f} MiB on disk" for i in report.images),
        "",
        f"{'image':<13} {'operation':<19} {'tool':<23} {'median s':>9} {'peak MiB':>9} {'vhdtool/tool':>13}",
    ]
    for row in report.rows:
        head = f"{row.image:<13} {row.operation:<19} {row.tool:<23}"
        if row.samples is None:
            lines.append(f"{head} {'missing: ' + str(row.missing) + ' is not on PATH':>33}")
            continue
        shown = f"{row.ratio:12.2f}x" if row.ratio is not None else ""
        lines.append(f"{head} {row.samples.wall:9.3f} {row.samples.peak_rss / MiB:9.1f} {shown:>13}".rstrip())
    lines += ["", f"vhdtool/tool: {OURS}'s median wall time over the tool's (below 1: vhdtool is faster)"]
    missing = sorted(p for p, path in report.peers.items() if path is None)
    if missing:
        lines.append(f"not found on PATH: {', '.join(missing)} (measured without them)")
    return lines


def ratio_bars(report: BenchReport) -> list[Bar]:
    """One bar per peer measured: vhdtool's time over the peer's on that image and operation."""
    return [Bar(f"{row.image}, {row.operation}: vs {row.tool}", row.ratio) for row in report.rows
            if row.ratio is not None]

"""Ratio charts (PNG) for `vhdtool bench --plot` and benchmarks/run_all.py. matplotlib is the
optional `plot` extra: asked for without it, the caller gets a one-line error saying how to
install it, before anything is measured."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vhdtool.errors import VhdError

INSTALL = "pip install 'vhdtool[plot]'"


@dataclass(frozen=True)
class Bar:
    label: str
    value: float  # a ratio of wall times
    target: float | None = None
    met: bool | None = None  # whether the target is met (None: no target)


def require_matplotlib(what: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise VhdError(f"{what} needs matplotlib, which is not installed: {INSTALL}") from None


VS_PEER = "vhdtool's median wall time / the other tool's (log scale; below 1: vhdtool is faster)"


def ratio_chart(bars: list[Bar], title: str, path: Path, xlabel: str = VS_PEER) -> None:
    """Horizontal bars on a log scale, a line at 1 (as fast as the peer), each target a black
    tick; bars green where the target is met, red where missed, blue without a target."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 1.2 + 0.32 * len(bars)), layout="constrained")
    ax = fig.subplots()
    ys = range(len(bars))[::-1]
    colors = ["tab:blue" if b.met is None else "tab:green" if b.met else "tab:red" for b in bars]
    low = min([b.value for b in bars] + [b.target for b in bars if b.target is not None] + [1.0]) / 2
    ax.barh(list(ys), [b.value - low for b in bars], left=low, color=colors, height=0.6)
    for y, b in zip(ys, bars, strict=True):
        ax.annotate(f"{b.value:.2f}x", (b.value, y), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)
        if b.target is not None:
            ax.plot([b.target, b.target], [y - 0.4, y + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(left=low)
    ax.set_yticks(list(ys), [b.label for b in bars], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=110)

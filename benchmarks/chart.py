"""The ``latency.png`` bar chart: ``aput`` p50 and p99 per contender, next to its floors.

The floors are the bare PubAck and the serializer cost (``serde``) every saver pays before it stores.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # the backend must be chosen first

from .contender import SERDE_PUT
from .latency import Row
from .payloads import SIZES


def plot_aput(rows: list[Row], path: Path, *, subtitle: str = "") -> None:
    """Draw one panel per payload size: p50 and p99 bars per contender (log scale), floors and serde too."""
    sizes = [s for s in SIZES if any(r.op == "aput" and r.size == s for r in rows)]
    if not sizes:
        return
    fig, axes = plt.subplots(1, len(sizes), figsize=(7 * len(sizes), 6), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        picked = [r for r in rows if r.size == size and r.op == "publish"]
        picked += [r for r in rows if r.size == size and r.op == "serde" and r.contender == SERDE_PUT]
        picked += [r for r in rows if r.size == size and r.op == "aput"]
        names = [f"{r.contender} (publish)" if r.op == "publish" else r.contender for r in picked]
        p50 = [r.sample.summary().p50 for r in picked]
        p99 = [r.sample.summary().p99 for r in picked]
        xs = range(len(picked))
        width = 0.4
        b1 = ax.bar([x - width / 2 for x in xs], p50, width, label="p50", color="#4C72B0")
        b2 = ax.bar([x + width / 2 for x in xs], p99, width, label="p99", color="#DD8452")
        for bars in (b1, b2):
            ax.bar_label(bars, labels=[f"{b.get_height():.2g}" for b in bars], fontsize=7, padding=1)
        ax.set_yscale("log")
        ax.set_ylabel("ms per call (log scale)")
        ax.set_title(f"aput, {size} messages channel")
        ax.set_xticks(list(xs), names, rotation=35, ha="right", fontsize=8)
        ax.legend()
        ax.grid(axis="y", which="both", alpha=0.3)
    title = "Checkpoint write latency (aput): lower is better"
    if subtitle:
        title += "\n" + "\n".join(textwrap.wrap(subtitle, width=95 * len(sizes)))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)

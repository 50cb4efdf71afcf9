"""Geometry of the Recon view's throughput chart, computed here so the template only draws."""

from __future__ import annotations

from typing import Any


def throughput_chart(runs: list[dict[str, Any]], width: int = 720, height: int = 170) -> dict[str, Any]:
    """Geometry of the throughput chart: one bar per run (processed), a line for the backlog."""
    pad_top, pad_bottom, pad_left = 12, 22, 40
    plot_w, plot_h = width - pad_left - 8, height - pad_top - pad_bottom
    peak = max([1] + [r["processed"] for r in runs] + [r["backlog"] for r in runs])
    slot = plot_w / max(len(runs), 1)
    bars, points = [], []
    for i, r in enumerate(runs):
        x = pad_left + i * slot
        h = plot_h * r["processed"] / peak
        bars.append(
            {
                "x": round(x + slot * 0.15, 1),
                "y": round(pad_top + plot_h - h, 1),
                "w": round(max(slot * 0.7, 1), 1),
                "h": round(h, 1),
                "run": r,
            }
        )
        points.append(f"{x + slot / 2:.1f},{pad_top + plot_h - plot_h * r['backlog'] / peak:.1f}")
    return {
        "width": width,
        "height": height,
        "bars": bars,
        "backlog_points": " ".join(points),
        "peak": peak,
        "axis_y": pad_top + plot_h,
        "pad_left": pad_left,
        "pad_top": pad_top,
    }

"""The charts of ``provision bench`` (PNG, beside the JSON result): the latency run's, and
the scale run's.

matplotlib is the 'bench' extra and slow to import, so :func:`_pyplot` imports it when a
chart is drawn; without it a chart raises ImportError and the run goes on without one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from shared.domain.steps import STEP_KEYS
from tooling.bench.report import dig


def _pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend (ImportError without the 'bench' extra)."""
    import matplotlib  # noqa: PLC0415 - optional (the 'bench' extra) and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - as above, and after the backend is chosen

    return plt


def draw_chart(
    path: Path, result: dict[str, Any], chor_e2e: Sequence[float], inproc_e2e: Sequence[float]
) -> None:
    """Waterfall of the median choreography project, the e2e distributions, per-step p50s."""
    plt = _pyplot()

    lat = result["latency"]
    fig, axes = plt.subplots(1, 3, figsize=(19, 6.5), gridspec_kw={"width_ratios": [1.4, 0.8, 1.1]})
    ax = axes[0]
    rows = lat["median_choreography_project"]["waterfall"]
    labels = [str(r["step"]) for r in rows]
    for i, r in enumerate(rows):
        hop = float(r["work_start_ms"]) - float(r["hop_start_ms"])
        work = float(r["work_end_ms"]) - float(r["work_start_ms"])
        ax.barh(i, hop, left=float(r["hop_start_ms"]), color="#f4a259", label="hop" if i == 0 else None)
        ax.barh(
            i,
            work,
            left=float(r["work_start_ms"]),
            color="#2a6f97",
            label="work" if i == 0 else None,
        )
        ax.text(
            float(r["work_end_ms"]) + 1,
            i,
            f"hop {hop:.1f} / work {work:.1f} ms",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the request call started")
    median = lat["median_choreography_project"]
    ax.set_title(f"median choreography project ({median['project_id']}, e2e {median['e2e_ms']:.0f} ms)")
    ax.legend(loc="upper right")
    ax.margins(x=0.25)

    ax = axes[1]
    ax.boxplot([list(chor_e2e), list(inproc_e2e)], showfliers=False, widths=0.5)
    ax.set_xticks([1, 2], ["choreography", "in-process"])
    for x, values in ((1, chor_e2e), (2, inproc_e2e)):
        ax.scatter(
            [x + (j % 7 - 3) * 0.03 for j in range(len(values))],
            values,
            s=10,
            alpha=0.6,
            color="#444",
        )
    ax.set_ylabel("end to end (ms)")
    ax.set_title(f"end to end, n={len(chor_e2e)} each (ratio p50 {lat['e2e_ratio_p50']:.2f}x)")

    ax = axes[2]
    width = 0.38
    for offset, mode, shade in ((-width / 2, "choreography", 1.0), (width / 2, "in_process", 0.55)):
        hop_p50 = [float(dig(lat, mode, "hop_ms", k, "p50") or 0.0) for k in STEP_KEYS]
        work_p50 = [float(dig(lat, mode, "work_ms", k, "p50") or 0.0) for k in STEP_KEYS]
        xs = [i + offset for i in range(len(STEP_KEYS))]
        ax.bar(
            xs,
            work_p50,
            width,
            color="#2a6f97",
            alpha=shade,
            label=f"work ({mode.replace('_', '-')})",
        )
        ax.bar(
            xs,
            hop_p50,
            width,
            bottom=work_p50,
            color="#f4a259",
            alpha=shade,
            label=f"hop ({mode.replace('_', '-')})",
        )
    ax.set_xticks(range(len(STEP_KEYS)), STEP_KEYS, rotation=30)
    ax.set_ylabel("p50 (ms)")
    ax.set_title("per step p50: work + hop (left choreography, right in-process)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_scale_chart(path: Path, scale: Mapping[str, Any]) -> None:
    """Left: throughput per instance count, chain and step beside the ceiling; right: the
    cores each group used in each phase."""
    plt = _pyplot()

    rows = scale["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [1.0, 1.2]})
    ax = axes[0]
    width = 0.27
    series = (
        ("projects_per_second", "chain (projects/s)", "#2a6f97"),
        ("database_step_per_second", "database step in the chain (runs/s)", "#61a5c2"),
        ("ceiling_per_second", "ceiling: k psql sessions (tenants/s)", "#f4a259"),
    )
    for i, (key, label, color) in enumerate(series):
        xs = [r["instances"] + (i - 1) * width for r in rows]
        ax.bar(xs, [r[key] or 0.0 for r in rows], width, color=color, label=label)
    for r in rows:
        top = max(r["projects_per_second"] or 0.0, r["ceiling_per_second"] or 0.0)
        ax.text(
            r["instances"],
            top * 1.02,
            f"{_fmt_ratio(r['ratio_to_ceiling'])} of ceiling\n"
            f"{_fmt_ratio(r['ratio_to_one_instance'])} of k=1",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks([r["instances"] for r in rows], [str(r["instances"]) for r in rows])
    ax.set_xlabel("database step instances (k) = parallel psql sessions")
    ax.set_ylabel("per second")
    ax.set_title("throughput against the parallel PostgreSQL ceiling")
    ax.legend(fontsize=8, loc="upper left")
    ax.margins(y=0.2)

    ax = axes[1]
    runs = scale["runs"]
    groups = ("postgresql", "workers", "kafka", "bench")
    colors = {"postgresql": "#2a6f97", "workers": "#f4a259", "kafka": "#6a994e", "bench": "#bc4749"}
    labels: list[str] = []
    bottoms: list[float] = []
    bars: dict[str, list[float]] = {g: [] for g in groups}
    other: list[float] = []
    for r in rows:
        run = runs[str(r["instances"])]
        for phase, name in (("ceiling_cpu", "ceiling"), ("chain_cpu", "chain")):
            cpu = run.get(phase) or {}
            labels.append(f"k={r['instances']}\n{name}")
            for g in groups:
                bars[g].append(float((cpu.get("cores") or {}).get(g, 0.0)))
            other.append(float(cpu.get("other_cores", 0.0)))
    bottoms = [0.0] * len(labels)
    for g in groups:
        ax.bar(range(len(labels)), bars[g], 0.6, bottom=bottoms, color=colors[g], label=g)
        bottoms = [b + v for b, v in zip(bottoms, bars[g], strict=True)]
    ax.bar(range(len(labels)), other, 0.6, bottom=bottoms, color="#bbbbbb", label="other processes")
    cores = os.cpu_count() or 1
    ax.axhline(cores, color="#444", linestyle="--", linewidth=1)
    ax.text(len(labels) - 0.5, cores, f"{cores} cores", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("cores used (average over the phase)")
    ax.set_title("who used the CPU in each phase")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, cores * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"

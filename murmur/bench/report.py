"""Tables and the chart: a rich table for the terminal, markdown for docs, a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from murmur.bench.stats import Spread
from murmur.bench.suite import Measurement, figure, spread_of
from murmur.bench.targets import Verdict

COLUMNS = (
    "broker",
    "system",
    "no-op tasks/s",
    "p50 / p99 ms",
    "20 ms I/O, c=50",
    "CPU µs/task",
    "RSS MB",
    "scale-out 1→2→4 tasks/s",
    "signed tasks/s",
)


def _fmt(v: Spread | None, digits: int = 0, range_: bool = True) -> str:
    if v is None:
        return "-"
    text = f"{v.median:,.{digits}f}"
    if range_ and v.n > 1:
        text += f" [{v.min:,.{digits}f}-{v.max:,.{digits}f}]"
    return text


def pairs(records: Sequence[Measurement]) -> list[tuple[str, str]]:
    """(broker, system) in first-measured order."""
    seen: dict[tuple[str, str], None] = {}
    for r in records:
        seen.setdefault((r.broker, r.system), None)
    return list(seen)


def rows(records: Sequence[Measurement]) -> list[list[str]]:
    """One row of formatted cells per (broker, system), in :data:`COLUMNS` order."""
    out = []
    for broker, system in pairs(records):

        def get(
            scenario: str,
            name: str,
            *,
            workers: int = 1,
            signing: bool = False,
            system: str = system,
            broker: str = broker,
        ) -> Any:
            return spread_of(
                figure(records, system, broker, scenario, name, workers=workers, signing=signing)
            )

        p50, p99 = get("latency", "p50_ms"), get("latency", "p99_ms")
        io, io_rate = get("io", "of_ideal"), get("io", "per_s")
        rss = get("memory", "rss_mb") or get("noop", "rss_mb")
        counts = sorted({r.workers for r in records if (r.system, r.broker) == (system, broker)})
        scale = [get("noop", "per_s", workers=n) for n in counts]
        out.append(
            [
                broker,
                system,
                _fmt(get("noop", "per_s")),
                f"{_fmt(p50, 2, False)} / {_fmt(p99, 2, False)}" if p50 and p99 else "-",
                f"{_fmt(io_rate, 0, False)}/s ({io.median * 100:.0f} %)" if io and io_rate else "-",
                _fmt(get("noop", "cpu_us_per_task")),
                _fmt(rss, 1, False),
                " → ".join(_fmt(s, 0, False) for s in scale) if len(counts) > 1 else "-",
                _fmt(get("noop", "per_s", signing=True)),
            ]
        )
    return out


def results_table(records: Sequence[Measurement], title: str = "results") -> Table:
    table = Table(title=title, title_justify="left")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c in ("broker", "system") else "right")
    for row in rows(records):
        table.add_row(*row)
    return table


_STYLE = {"PASS": "bold green", "MISS": "bold red", "n/a": "dim"}


def targets_table(verdicts: Sequence[Verdict], title: str = "targets") -> Table:
    table = Table(title=title, title_justify="left")
    for c in ("broker", "target", "measured [min-max]", "bound", "verdict"):
        table.add_column(c)
    for v in verdicts:
        bound = f"{v.target.better} {v.target.bound:g}{v.target.unit}"
        table.add_row(
            v.broker,
            v.target.text,
            v.describe(),
            bound,
            f"[{_STYLE[v.status]}]{v.status}[/]",
        )
    return table


def markdown(records: Sequence[Measurement], verdicts: Sequence[Verdict]) -> str:
    """The results and targets as markdown tables (for docs/benchmarks.md)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(records)]
    if verdicts:
        lines += [
            "",
            "| broker | target | measured [min-max] | bound | verdict |",
            "|---|---|---|---|---|",
        ]
        for v in verdicts:
            bound = f"{v.target.better} {v.target.bound:g}{v.target.unit}"
            verdict = {"PASS": "**PASS**", "MISS": "**MISS**"}.get(v.status, v.status)
            lines.append(f"| {v.broker} | {v.target.text} | {v.describe()} | {bound} | {verdict} |")
    return "\n".join(lines) + "\n"


def chart(records: Sequence[Measurement], path: Path, title: str = "") -> Path | None:
    """Bar charts of no-op throughput and p50/p99 per system and broker, plus scale-out.

    Returns None when matplotlib is missing (the caller says so); never fails a run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ps = pairs(records)
    labels = [f"{s}\n{b}" for b, s in ps]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5), gridspec_kw={"width_ratios": [3, 3, 2]})
    ax_t, ax_l, ax_s = axes

    def med(system: str, broker: str, scenario: str, name: str, **kw: Any) -> float:
        s = spread_of(figure(records, system, broker, scenario, name, **kw))
        return s.median if s else 0.0

    xs = range(len(ps))
    through = [med(s, b, "noop", "per_s") for b, s in ps]
    colors = [
        "#4c72b0" if s == "murmur" else "#999999" if s == "ceiling" else "#dd8452" for b, s in ps
    ]
    ax_t.bar(xs, through, color=colors)
    ax_t.set_title("no-op tasks/s, 1 worker (higher is better)")
    ax_l.bar(
        [x - 0.2 for x in xs], [med(s, b, "latency", "p50_ms") for b, s in ps], 0.4, label="p50"
    )
    ax_l.bar(
        [x + 0.2 for x in xs], [med(s, b, "latency", "p99_ms") for b, s in ps], 0.4, label="p99"
    )
    ax_l.set_yscale("log")
    ax_l.set_title("round trip ms, log scale (lower is better)")
    ax_l.legend()
    for ax in (ax_t, ax_l):
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=7, rotation=45, ha="right")
    for b, s in ps:
        counts = sorted({r.workers for r in records if (r.system, r.broker) == (s, b)})
        if len(counts) > 1:
            ax_s.plot(
                counts,
                [med(s, b, "noop", "per_s", workers=n) for n in counts],
                marker="o",
                label=f"{s}/{b}",
            )
    ax_s.set_title("scale-out: no-op tasks/s by worker processes")
    ax_s.set_xlabel("worker processes")
    ax_s.set_xticks(sorted({r.workers for r in records}))
    if ax_s.lines:
        ax_s.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

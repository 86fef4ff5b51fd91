"""The demo's HTML report (``hwemu demo --report DIR``).

``DIR/index.html`` opens in a browser from the file system (no server, no
script, nothing fetched): the outcome, a timeline picture, every step of
every choreography with its pause, the checks, the I/O counts, and links to
the trace of the run. ``DIR/timeline.png`` (matplotlib) is drawn from the
trace (``DIR/trace.json``, orchestrator/tracing.py): the guest's speed (MIPS,
from the CPU's instructions-retired counter) and the rate of interrupts
delivered, over the run, with each choreography step's pause window marked
across both, and below them the pause of each step.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

TRACE = "trace.json"
PICTURE = "timeline.png"
IRQ_BIN_S = 0.25  # seconds per bar of the interrupt rate


def timeline(trace: dict[str, Any]) -> dict[str, Any]:
    """What the picture shows, read from a Chrome JSON trace: the steps
    ``[{name, start, end, pause_ms, pause_start}]``, the guest's MIPS
    ``[(t, mips)]`` and the interrupt deliveries ``[t]``, in seconds from the
    trace's start."""
    steps, mips, irqs = [], [], []
    pauses = {}
    for e in trace.get("traceEvents", []):
        if e.get("cat") == "chor.pause":
            pauses[(e["args"]["figure"], e["args"]["step"], round(e["ts"] + e["dur"]))] = e["ts"] / 1e6
    for e in trace.get("traceEvents", []):
        cat, ph = e.get("cat"), e.get("ph")
        if cat == "chor.step":
            a = e["args"]
            end = e["ts"] + e["dur"]
            steps.append({"name": e["name"], "start": e["ts"] / 1e6, "end": end / 1e6, "pause_ms": a["pause_ms"],
                          "pause_start": pauses.get((a["figure"], a["step"], round(end)), end / 1e6)})
        elif ph == "C" and e["name"] == "MIPS":
            mips.append((e["ts"] / 1e6, e["args"]["mips"]))
        elif cat == "irq" and e["name"].startswith("irq deliver"):
            irqs.append(e["ts"] / 1e6)
    return {"steps": steps, "mips": sorted(mips), "irqs": sorted(irqs)}


def draw(data: dict[str, Any], path: Path) -> None:
    """The timeline picture (PNG) of :func:`timeline`'s data."""
    fig = Figure(figsize=(12, 6.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_mips, ax_irq, ax_pause = fig.subplots(3, 1, sharex=True, height_ratios=[3, 2, 2])
    if data["mips"]:
        t, m = zip(*data["mips"])
        ax_mips.plot(t, m, color="tab:blue", linewidth=0.8)
    ax_mips.set_ylabel("guest MIPS")
    ax_mips.set_title("guest progress and interrupts; choreography steps that paused senders in red")
    end = max([s["end"] for s in data["steps"]] + [t for t, _ in data["mips"]] + data["irqs"] + [1.0])
    bins = max(1, int(end / IRQ_BIN_S) + 1)
    counts = [0] * bins
    for t in data["irqs"]:
        counts[min(bins - 1, int(t / IRQ_BIN_S))] += 1
    ax_irq.bar([i * IRQ_BIN_S for i in range(bins)], [c / IRQ_BIN_S for c in counts], width=IRQ_BIN_S,
               align="edge", color="tab:green")
    ax_irq.set_ylabel("interrupts/s")
    for s in data["steps"]:
        for ax in (ax_mips, ax_irq):
            ax.axvspan(s["start"], s["end"], color="0.85", zorder=0, linewidth=0)
            if s["pause_ms"]:
                # a pause is milliseconds in a run of a minute: drawn at least 2 px wide
                ax.axvspan(s["pause_start"], max(s["end"], s["pause_start"] + end / 600), color="tab:red",
                           alpha=0.6, zorder=1, linewidth=0)
    paused = [s for s in data["steps"] if s["pause_ms"]]
    if paused:
        ax_pause.stem([s["pause_start"] for s in paused], [s["pause_ms"] for s in paused], linefmt="tab:red",
                      markerfmt="o", basefmt="0.6")
    ax_pause.set_ylabel("pause (ms)")
    ax_pause.set_xlabel("seconds since the trace started")
    fig.savefig(path)


def _table(headers: list[str], rows: list[list[Any]], cls: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1250px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:left}th{background:#eee}
.ok{color:#080;font-weight:bold}.failed{color:#c00;font-weight:bold}img{max-width:100%;border:1px solid #ccc}"""


def write(out: Path, rep: dict[str, Any], trace_file: Path | None = None) -> Path:
    """Write ``out/index.html`` (and ``out/timeline.png``) for the demo report ``rep``;
    returns the page's path. ``trace_file``: another copy of the trace to link."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trace_path = out / TRACE
    have_trace = trace_path.exists()
    if have_trace:
        with open(trace_path, encoding="utf-8") as f:
            data = timeline(json.load(f))
    else:
        data = {"steps": [], "mips": [], "irqs": []}
    draw(data, out / PICTURE)
    outcome = ('<span class="ok">passed: every check held</span>' if rep["ok"] else
               f'<span class="failed">FAILED: {html.escape(", ".join(rep["failed"]))}</span>')
    steps = _table(["phase", "figure", "step", "patent", "ms", "pause ms"],
                   [[s["phase"], s["figure"], s["step"], s["patent"], f"{s['ms']:.2f}",
                     f"{s['pause_ms']:.2f}" if s["pause_ms"] else ""] for s in rep["steps"]], "steps")
    checks = _table(["check", "result", "detail"],
                    [[c["check"], "ok" if c["ok"] else "FAILED", c["detail"]] for c in rep["checks"]], "checks")
    io = rep["io"]
    io_rows = [["UDP echo client", f"{io['udp_sent']} datagrams sent, {io['udp_replies']} exact replies, "
                                   f"{io['udp_lost']} lost, {io['udp_mismatched']} wrong"],
               ["key-value client", f"{io['kv_requests']} requests, {io['kv_exact']} exact replies, "
                                    f"{io['kv_lost']} lost, {io['kv_wrong']} wrong"]]
    if io.get("disk0"):
        io_rows.append(["disk0", ", ".join(f"{k} {v}" for k, v in io["disk0"].items())])
    for f, n in sorted((io.get("interrupts") or {}).items()):
        io_rows.append([f"interrupts {f}", n])
    links = [trace_path] if have_trace else []
    if trace_file is not None and Path(trace_file).exists() and Path(trace_file).resolve() != trace_path.resolve():
        links.append(Path(trace_file))
    trace_links = " ".join(
        f'<a href="{html.escape(os.path.relpath(p.resolve(), out.resolve()))}">{html.escape(p.name)}</a>'
        for p in links) or "none recorded"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hwemu demo report</title><style>{STYLE}</style></head>
<body>
<h1>hwemu demo</h1>
<p>Outcome: {outcome}. {rep['seconds']:.1f} s; {len(rep['steps'])} choreography steps, longest pause
{rep['pause_ms']['max']:.2f} ms, total {rep['pause_ms']['total']:.2f} ms.</p>
<h2>Timeline</h2>
<img id="timeline" src="{PICTURE}" alt="guest MIPS, interrupt rate and each step's pause over the run">
<p>Trace of the run: {trace_links} (open it in <a href="https://ui.perfetto.dev">ui.perfetto.dev</a>:
one track per node, an arrow per message, every choreography step with its pause on the orchestrator's track).</p>
<h2>Every step of every choreography</h2>
{steps}
<h2>Checks</h2>
{checks}
<h2>I/O</h2>
{_table(["what", "counts"], io_rows, "io")}
</body></html>
"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index

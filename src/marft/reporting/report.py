"""``marft report``: one or more runs as a single self-contained HTML page.

The page holds the team's return, per-agent policy loss, approximate KL and entropy, per-agent
learning diagnostics (advantages, gradient and update norms, actions cut at the length limit; for
runs that logged them), the value loss (for algorithms with a critic), time and peak memory per
phase, each run's resolved config, and the episode transcripts, best and worst first, each agent's
turn under its role. Plots are
drawn with matplotlib and embedded as inline SVG, so the file opens anywhere without a network.

Example:
    >>> from marft.reporting.report import write_report
    >>> write_report(["runs/appo", "runs/grpo"], "compare.html")  # doctest: +SKIP
"""

from __future__ import annotations

import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from marft.reporting.metrics import read_metrics

PHASES = {
    "time_generate_s": "generate",
    "time_env_s": "env and prompts",
    "time_score_s": "score (critic features, reference)",
    "time_advantages_s": "advantages",
    "time_critic_s": "critic",
    "time_policy_s": "policy",
    "time_checkpoint_s": "checkpoint",
}
MEMORY = {
    "memory_peak_collect_mb": "peak, collect",
    "memory_peak_score_mb": "peak, score",
    "memory_peak_policy_mb": "peak, policy",
    "memory_rss_mb": "held after the iteration",
}
PER_AGENT = {
    "policy_loss": "Policy loss per agent",
    "approx_kl": "Approximate KL per agent (learner vs sampler, last minibatch)",
    "entropy": "Entropy per token, per agent",
}
DIAGNOSTICS = {
    "adv_mean": "Advantage mean per agent",
    "adv_std": "Advantage std per agent",
    "adv_zero_share": "Share of zero advantages per agent",
    "grad_norm": "Gradient norm before clipping per adapter",
    "update_norm": "Update norm per adapter",
    "cut_share": "Share of actions cut at the length limit per agent",
}
"""Per-agent (or per-adapter) learning diagnostics, plotted like :data:`PER_AGENT` where a run
logged them (runs from before these columns have no such plot)."""
NESTED = {
    "nested_effect": "return apart from its siblings",
    "answer_change": "answer differs across these actions",
    "answer_change_within": "answer differs under one action",
}
"""Nested groups' per-depth shares (``KEY/depth<d>``), drawn in one panel per depth: a plan that
steers the answer shows ``answer_change`` above ``answer_change_within``."""
TRANSCRIPTS_SHOWN = 5  # best and worst episodes on the page; the rest are one click away, capped
TRANSCRIPTS_MAX = 200


@dataclass
class RunData:
    """What a run directory holds, read once."""

    name: str
    path: Path
    config_text: str
    rows: list[dict[str, Any]]
    transcripts: list[dict[str, Any]]

    def names(self, key: str) -> list[str]:
        """Who a per-agent metric ``key/<name>`` was logged for: agents, or adapters for the
        update's metrics (one ``shared`` adapter under ``lora.shared``)."""
        return sorted({k.split("/", 1)[1] for r in self.rows for k in r if k.startswith(key + "/")})


def load_run(path: str | Path) -> RunData:
    """Read a run directory's config, metrics and transcripts.

    Raises:
        FileNotFoundError: no ``metrics.jsonl`` (not a run directory, or it logged nothing yet).
    """
    path = Path(path)
    if not (path / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{path} has no metrics.jsonl; give the --out folder of a marft train run")
    rows = read_metrics(path)
    transcripts = []
    tpath = path / "transcripts.jsonl"
    if tpath.exists():
        for line in tpath.read_text().splitlines():
            try:
                transcripts.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a kill
    cfg = path / "config.yaml"
    return RunData(
        name=path.resolve().name,
        path=path,
        config_text=cfg.read_text() if cfg.exists() else "(no config.yaml)",
        rows=rows,
        transcripts=transcripts,
    )


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(r["iteration"])
            ys.append(float(v))
    return xs, ys


def _route_series(rows: list[dict[str, Any]], route: str) -> tuple[list[int], list[float]]:
    """Share of ``route`` per iteration of a routing team (0 where another route was taken)."""
    routed = [r for r in rows if any(k.startswith("route_share/") for k in r)]
    return [r["iteration"] for r in routed], [float(r.get(f"route_share/{route}", 0.0)) for r in routed]


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline SVG in HTML


def _figure(panels: list[tuple[str, list[tuple[str, list[int], list[float]]]]], ylabel: str) -> str:
    """One figure, one panel per entry of ``panels``; each panel overlays (label, x, y) lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(max(6.0, min(4.2 * n, 13)), 3.2), squeeze=False)
    for ax, (name, lines) in zip(axes[0], panels, strict=False):
        for label, xs, ys in lines:
            ax.plot(xs, ys, label=label, linewidth=1.4, marker="o" if len(xs) < 12 else None, markersize=3)
        ax.set_title(name, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if any(label for label, _, _ in lines):
            ax.legend(fontsize=8)
    svg = _svg(fig)
    plt.close(fig)
    return svg


def _label(run: RunData, many: bool, extra: str = "") -> str:
    return f"{run.name}{' ' + extra if extra else ''}" if many else extra


def plots(runs: list[RunData]) -> dict[str, tuple[str, str]]:
    """Every plot of the page: ``{id: (title, inline SVG)}``."""
    many = len(runs) > 1
    out = {}
    out["return"] = (
        "Team return",
        _figure(
            [("episode return", [(_label(r, many), *_series(r.rows, "episode_return")) for r in runs])],
            "mean",
        ),
    )
    for key, title in {**PER_AGENT, **DIAGNOSTICS}.items():
        roles = sorted({name for r in runs for name in r.names(key)})
        if not roles and key in DIAGNOSTICS:
            continue
        panels = [
            (role, [(_label(r, many), *_series(r.rows, f"{key}/{role}")) for r in runs]) for role in roles
        ]
        out[key] = (title, _figure(panels, key.replace("_", " ")))
    routes = sorted({name for r in runs for name in r.names("route_share")})
    if routes:  # routing teams: a route missing from an iteration's row was not taken (share 0)
        panels = [
            (
                r.name if many else "share of team steps",
                [(route, *_route_series(r.rows, route)) for route in routes],
            )
            for r in runs
        ]
        out["routes"] = ("Routes taken per iteration", _figure(panels, "share"))
    judged = [r for r in runs if any("judge_score" in row for row in r.rows)]
    if judged:  # judged work: the training judge beside the held-out one (the guard's view)
        keys = {"judge_score": "judge", "heldout_score": "held-out judge", "rules_pass": "rules kept"}
        panels = [
            (r.name if many else "mean per iteration", [(n, *_series(r.rows, k)) for k, n in keys.items()])
            for r in judged
        ]
        out["judge"] = ("Judge scores and rule checks", _figure(panels, "score / share"))
    depths = sorted({name for r in runs for name in r.names("nested_effect")})
    if depths:  # nested groups: does a depth's action change the outcome, and the answer?
        panels = [
            (
                f"{r.name} {depth}" if many else depth,
                [(label, *_series(r.rows, f"{key}/{depth}")) for key, label in NESTED.items()],
            )
            for r in runs
            for depth in depths
        ]
        out["nested"] = ("Nested groups: what each depth's action changes", _figure(panels, "share"))
    critic = [r for r in runs if any("value_loss" in row for row in r.rows)]
    if critic:
        lines = [(_label(r, many), *_series(r.rows, "value_loss")) for r in critic]
        out["value_loss"] = ("Value loss (critic)", _figure([("value loss", lines)], "loss"))
    if many:
        panels = [(name, [(r.name, *_series(r.rows, k)) for r in runs]) for k, name in PHASES.items()]
    else:
        panels = [
            ("seconds per iteration", [(name, *_series(runs[0].rows, k)) for k, name in PHASES.items()])
        ]
    out["time"] = ("Time per phase", _figure(panels, "seconds"))
    if any("memory_rss_mb" in row for r in runs for row in r.rows):
        if many:
            panels = [(name, [(r.name, *_series(r.rows, k)) for r in runs]) for k, name in MEMORY.items()]
        else:
            panels = [("resident memory", [(name, *_series(runs[0].rows, k)) for k, name in MEMORY.items()])]
        out["memory"] = ("Memory per phase (process resident set)", _figure(panels, "MB"))
    return out


def _summary(run: RunData) -> dict[str, str]:
    returns = [r["episode_return"] for r in run.rows if isinstance(r.get("episode_return"), (int, float))]
    last = returns[-5:]
    try:
        cfg = yaml.safe_load(run.config_text) or {}
    except yaml.YAMLError:
        cfg = {}
    cfg = cfg if isinstance(cfg, dict) else {}  # "(no config.yaml)"
    out = {
        "run": run.name,
        "algorithm": str(cfg.get("algorithm", {}).get("name", "?")),
        "model": str(cfg.get("model", {}).get("name", "?")),
        "agents": ", ".join(a.get("role", "?") for a in cfg.get("team", {}).get("agents", [])),
        "iterations": str(len(run.rows)),
        "return, last 5": f"{sum(last) / len(last):.3f}" if last else "n/a",
        "best return": f"{max(returns):.3f}" if returns else "n/a",
        "training time": f"{run.rows[-1].get('time_s', 0.0):.0f} s" if run.rows else "n/a",
        "failed episodes": str(sum(r.get("episodes_failed", 0) or 0 for r in run.rows)),
    }
    if any("reward_hacking" in r for r in run.rows):  # judged work with a held-out judge: the guard
        flagged = [r["iteration"] for r in run.rows if r.get("reward_hacking") == 1.0]
        out["reward hacking"] = f"flagged at iteration {flagged[0]}" if flagged else "not flagged"
    return out


def _transcript_html(t: dict[str, Any]) -> str:
    e = html.escape
    parts = [
        f'<div class="transcript"><div class="thead">iteration {e(str(t.get("iteration")))} · env '
        f"{e(str(t.get('env')))} · return <b>{e(str(t.get('episode_return')))}</b></div>"
    ]
    for turn in t.get("turns", []):
        parts.append(
            f'<div class="step">step {e(str(turn.get("step")))} · reward {e(str(turn.get("reward")))}'
            + (f" · route {e(str(turn['route']))}" if turn.get("route") else "")
            + "</div>"
        )
        for agent in turn.get("agents", []):
            prompt = "\n\n".join(f"[{m.get('role')}] {m.get('content')}" for m in agent.get("messages", []))
            parts.append(
                f'<div class="turn"><div class="role">{e(str(agent.get("role")))}</div>'
                f'<pre class="resp">{e(str(agent.get("response")))}</pre>'
                f"<details><summary>prompt</summary><pre>{e(prompt)}</pre></details></div>"
            )
        if turn.get("info"):
            parts.append(f'<div class="info">info: {e(json.dumps(turn["info"], default=str))}</div>')
    parts.append("</div>")
    return "".join(parts)


def _transcripts_section(run: RunData) -> str:
    ts = [t for t in run.transcripts if isinstance(t.get("episode_return"), (int, float))]
    if not ts:
        return "<p>No transcripts (run.transcripts_per_iter is 0, or no episode finished).</p>"
    ranked = sorted(ts, key=lambda t: (-t["episode_return"], -t.get("iteration", 0)))
    worst = sorted(ts, key=lambda t: (t["episode_return"], -t.get("iteration", 0)))
    rest = sorted(ts, key=lambda t: t.get("iteration", 0), reverse=True)[:TRANSCRIPTS_MAX]
    return (
        f"<h3>Best episodes</h3>{''.join(_transcript_html(t) for t in ranked[:TRANSCRIPTS_SHOWN])}"
        f"<h3>Worst episodes</h3>{''.join(_transcript_html(t) for t in worst[:TRANSCRIPTS_SHOWN])}"
        f"<details><summary>All transcripts, newest first ({len(rest)} of {len(ts)})</summary>"
        f"{''.join(_transcript_html(t) for t in rest)}</details>"
    )


CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
.plot svg{max-width:100%;height:auto} pre{white-space:pre-wrap;margin:.2em 0}
.transcript{border:1px solid #ccc;border-radius:6px;margin:.6em 0;padding:.5em .8em;background:#fafafa}
.thead{font-weight:600;margin-bottom:.3em} .step{color:#666;font-size:.9em;margin-top:.4em}
.turn{margin:.3em 0 .3em 1em} .role{font-weight:600;color:#1f5fa8}
.resp{background:#fff;border-left:3px solid #1f5fa8;padding:.2em .5em}
.info{color:#666;font-size:.85em;margin-left:1em} details summary{cursor:pointer;color:#555}
"""


def render(runs: list[RunData]) -> str:
    """The whole page as one HTML string."""
    e = html.escape
    figs = plots(runs)
    summaries = [_summary(r) for r in runs]
    head = list(dict.fromkeys(h for s in summaries for h in s))
    table = "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
    table += (
        "".join("<tr>" + "".join(f"<td>{e(s.get(h, ''))}</td>" for h in head) + "</tr>" for s in summaries)
        + "</table>"
    )
    body = [f"<h1>marft report: {e(', '.join(r.name for r in runs))}</h1>", table]
    for key, (title, svg) in figs.items():
        body.append(f'<h2>{e(title)}</h2><div class="plot" id="plot-{key}">{svg}</div>')
    for run in runs:
        body.append(f"<h2>Config: {e(run.name)}</h2><details><summary>config.yaml</summary>")
        body.append(f"<pre>{e(run.config_text)}</pre></details>")
        body.append(f"<h2>Transcripts: {e(run.name)}</h2>{_transcripts_section(run)}")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>marft report: {e(', '.join(r.name for r in runs))}</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Write the report of one run (or several, overlaid) and return its path.

    Args:
        run_dirs: run directories (``--out`` folders of ``marft train``).
        out: the HTML file (default: ``report.html`` in the first run directory for one run,
            ``report-<names>.html`` in the current folder for several).
    """
    runs = [load_run(p) for p in run_dirs]
    if out is None:
        out = (
            runs[0].path / "report.html"
            if len(runs) == 1
            else Path(f"report-{'-vs-'.join(r.name for r in runs)}.html")
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(runs), encoding="utf-8")
    tmp.replace(out)
    return out

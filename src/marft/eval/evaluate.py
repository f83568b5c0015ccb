"""Evaluation of a team on a problem set: accuracy, pass@k, majority vote, per-agent ablation;
on judged work also judge scores and the win rate against the untrained team.

Every problem is attempted ``samples`` times by the whole team (multi-turn up to ``env.horizon``,
as in training). The ablation re-runs the evaluation once per agent with that agent swapped back
to the base model (its adapter disabled), and reports how much accuracy drops.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from marft.compose import bind_judges, build_envs, build_generators, build_team_model, resolve
from marft.config import Config, ConfigError
from marft.envs.base import summarize_metrics
from marft.eval.judged import compare_with_untrained
from marft.rollout.backends import BASE
from marft.rollout.collector import Collector
from marft.runtime import ThreadGovernor
from marft.trainer.checkpoint import load_adapter_weights, resolve_checkpoint


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority(answers: list[str | None], same: Callable[[str, str], bool]) -> int | None:
    """Index of a sample holding the most common answer, counting answers that ``same`` calls
    equal (``5``, ``5.0`` for math) as one vote. Ties go to the answer seen first; None when no
    sample gave an answer."""
    clusters: list[list[int]] = []
    for i, a in enumerate(answers):
        if not a:
            continue
        for c in clusters:
            if same(a, answers[c[0]]):
                c.append(i)
                break
        else:
            clusters.append([i])
    return max(clusters, key=len)[0] if clusters else None


def load_adapters(model, checkpoint: str | Path) -> Path:
    """Load every agent's adapter from a run directory (its newest complete checkpoint) or a
    checkpoint folder; returns the checkpoint folder.

    Raises:
        CheckpointError: nothing usable there, or an agent's adapter is missing or does not fit.
    """
    ckpt = resolve_checkpoint(checkpoint)
    load_adapter_weights(model, ckpt)
    return ckpt


@dataclass
class ProblemResult:
    """One problem's samples: whether each was right (the env's ``StepResult.correct`` at the
    episode's last step), each final answer (``StepResult.answer``), and the tokens the whole team
    generated for each."""

    index: int
    correct: list[bool]
    answers: list[str | None]
    tokens: list[int] = field(default_factory=list)
    routes: list[str | None] = field(default_factory=list)
    """Routing teams: each sample's route at its last step (None for static teams)."""
    metrics: list[dict[str, float]] = field(default_factory=list)
    """Each sample's scores from the env (``StepResult.info["metrics"]``: judged envs' judge score,
    rule pass, words), averaged by :meth:`Evaluator.summarize`."""
    responses: list[str | None] = field(default_factory=list)
    """Judged envs: each sample's judged response (``info["judged_role"]``'s output)."""


@dataclass
class EvalRun:
    """One pass over the problems: per problem its samples, the transcripts, the envs' counters."""

    results: list[ProblemResult]
    transcripts: list[dict[str, Any]]
    env_metrics: dict[str, float] = field(default_factory=dict)


class Evaluator:
    """Runs a team (optionally from a checkpoint) over a problem set.

    Works with any :class:`~marft.envs.capabilities.EvaluableEnv` (a problem list: ``problems``,
    ``reset_to``) that says whether the team was right (``StepResult.correct``); an
    :class:`~marft.envs.capabilities.AnswerMatchingEnv`'s ``same_answer(a, b)`` groups equal
    answers for the majority vote, and a :class:`~marft.envs.capabilities.JudgeableEnv`'s judge
    (:attr:`judge`) compares the trained team with the untrained one.

    Args:
        cfg: the team's config.
        checkpoint: run directory or checkpoint folder whose adapters to load (None: base model).
        samples: attempts per problem (K).
        limit: evaluate only the first N problems.
        batch: env copies run together.
        progress: show a progress bar.

    Attributes:
        envs: the env copies (:class:`~marft.envs.copies.EnvCopies`).
        judge: the judge of a judged env (None for other envs).
    """

    def __init__(
        self,
        cfg: Config,
        checkpoint: str | Path | None = None,
        samples: int = 1,
        limit: int | None = None,
        batch: int = 32,
        progress: bool = True,
    ) -> None:
        resolved = resolve(cfg)
        self.cfg = cfg
        self.samples = samples
        self.progress = progress
        self.graph = resolved.graph
        probe = build_envs(resolved, 1)
        problems = probe.problems  # ConfigError when the env has no problem set
        self.n_problems = min(limit or len(problems), len(problems))
        self.per_chunk = max(1, batch // samples)
        self.envs = build_envs(resolved, self.per_chunk * samples)
        self.same_answer: Callable[[str, str], bool] = self.envs.same_answer
        self.governor = ThreadGovernor.for_run(cfg.run.torch_threads)  # adapts to other processes
        self.threads = self.governor.threads
        self.model = build_team_model(resolved, probe[0], with_critic=False)
        self.checkpoint = load_adapters(self.model, checkpoint) if checkpoint is not None else None
        self.judge = bind_judges(resolved, self.envs, self.model.members[0])
        self.generators = build_generators(resolved, self.model, probe[0])
        self.backend = self.generators.per_base[self.generators.bases[0]].backend

    @torch.no_grad()
    def run(self, swap_to_base: str | None = None, untrained: bool = False) -> EvalRun:
        """Evaluate every problem; ``swap_to_base`` runs that agent on the bare base model,
        ``untrained`` every agent (the untrained team)."""
        adapter_of = {swap_to_base: BASE} if swap_to_base else None
        if untrained:
            adapter_of = dict.fromkeys(self.graph.roles, BASE)
        K, n_envs = self.samples, len(self.envs)
        collector = Collector(
            self.envs,
            self.graph,
            self.model.members[0].tokenizer,
            self.backend,
            self.cfg.env,
            self.cfg.sampling,
            seed=self.cfg.run.seed,
            episodic=True,
            group_size=K,
            transcripts_per_iter=n_envs,
            adapter_of=adapter_of,
            generators=self.generators,
        )
        out = EvalRun([], [])
        desc = "marft eval" + (
            f" ({swap_to_base} -> base)" if swap_to_base else " (untrained)" if untrained else ""
        )
        bar = tqdm(total=self.n_problems, desc=desc, disable=not self.progress, dynamic_ncols=True)
        for start in range(0, self.n_problems, self.per_chunk):
            idx = list(range(start, min(start + self.per_chunk, self.n_problems)))
            # the last chunk may be short: its spare env copies repeat a problem and are ignored
            problems = [idx[min(b // K, len(idx) - 1)] for b in range(n_envs)]
            self.governor.adapt()
            traj = collector.collect(self.cfg.env.horizon, problems=problems)
            for key, value in traj.env_metrics.items():
                out.env_metrics[key] = out.env_metrics.get(key, 0.0) + value
            by_env = {t["env"]: t for t in traj.transcripts}
            T = traj.shape[1]
            tokens = sum(a.response_mask.reshape(n_envs, T, -1).sum((1, 2)) for a in traj.agents).tolist()
            for b in by_env:
                by_env[b]["generated_tokens"] = int(tokens[b])
            for j, p in enumerate(idx):
                samples = [by_env[b] for b in range(j * K, (j + 1) * K)]
                out.results.append(self._result(p, samples))
                out.transcripts += [
                    {
                        "problem_index": p,
                        "sample": k,
                        "swap_to_base": swap_to_base,
                        "untrained": untrained,
                        **t,
                    }
                    for k, t in enumerate(samples)
                ]
            bar.update(len(idx))
        bar.close()
        return out

    def _result(self, problem: int, samples: list[dict[str, Any]]) -> ProblemResult:
        last = [t["turns"][-1] for t in samples]
        if any(turn["correct"] is None for turn in last):
            raise ConfigError(
                "env.name",
                f"env {self.cfg.env.name!r} does not say whether an answer is correct (StepResult.correct)",
            )
        return ProblemResult(
            problem,
            [bool(turn["correct"]) for turn in last],
            [turn["answer"] for turn in last],
            [t["generated_tokens"] for t in samples],
            [turn.get("route") for turn in last],
            [dict(turn["info"].get("metrics", {})) for turn in last],
            [_judged_response(turn) for turn in last],
        )

    def summarize(self, results: list[ProblemResult]) -> dict[str, float]:
        """accuracy (mean over all samples), pass@1, pass@K, maj@K (the majority answer's
        sample was right), the team's generated tokens per sample, and for routing teams each
        route's share of samples and accuracy (``route_share/<route>``, ``route_accuracy/<route>``)."""
        K = self.samples
        out = {
            "accuracy": sum(sum(r.correct) for r in results) / (K * len(results)),
            "pass@1": sum(pass_at_k(K, sum(r.correct), 1) for r in results) / len(results),
            "generated_tokens": sum(sum(r.tokens) for r in results) / (K * len(results)),
        }
        routes = [
            (route, ok) for r in results for route, ok in zip(r.routes, r.correct, strict=False) if route
        ]
        for route in sorted({route for route, _ in routes}):  # routing teams: each route's share and accuracy
            oks = [ok for rt, ok in routes if rt == route]
            out[f"route_share/{route}"] = len(oks) / len(routes)
            out[f"route_accuracy/{route}"] = sum(oks) / len(oks)
        scored = [m for r in results for m in r.metrics]
        for key in sorted({k for m in scored for k in m}):  # judged envs: judge score, rules, words
            values = [m[key] for m in scored if key in m]
            out[key] = sum(values) / len(values)
        if K > 1:
            out[f"pass@{K}"] = sum(pass_at_k(K, sum(r.correct), K) for r in results) / len(results)
            if not any(a is not None for r in results for a in r.answers):
                return out  # no answers to vote on (a program is judged, not compared): no maj@K
            tops = [(r, majority(r.answers, self.same_answer)) for r in results]
            out[f"maj@{K}"] = sum(r.correct[top] for r, top in tops if top is not None) / len(results)
        return out


def _judged_response(turn: dict[str, Any]) -> str | None:
    """The judged agent's response of a transcript step (None outside judged envs)."""
    role = turn.get("info", {}).get("judged_role")
    return next((a["response"] for a in reversed(turn["agents"]) if a["role"] == role), None)


def evaluate(
    cfg: Config,
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    samples: int = 1,
    limit: int | None = None,
    ablation: bool = True,
    batch: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate, run the per-agent ablation (when a checkpoint is given), and write
    ``summary.json`` and ``transcripts.jsonl`` into ``out_dir``. On judged work (an env with a
    judge) with a checkpoint, the untrained team is evaluated too and compared pairwise.

    Returns:
        The summary: the trained team's metrics, per agent those with it swapped back to the base
        and the drops, and on judged work ``untrained`` and ``vs_untrained`` (win rate, gains).
    """
    ev = Evaluator(cfg, checkpoint, samples, limit, batch, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    team = ev.run()
    summary: dict[str, Any] = {
        "n_problems": ev.n_problems,
        "samples": samples,
        "checkpoint": str(ev.checkpoint) if ev.checkpoint else None,
        "model": cfg.model.name,
        "data": cfg.env.kwargs.get("data"),
        "team": ev.summarize(team.results),
        "ablation": {},
    }
    runs = [team]
    if ablation and ev.checkpoint is not None and len(ev.graph.roles) > 1:
        for role in ev.graph.roles:
            runs.append(ev.run(swap_to_base=role))
            metrics = ev.summarize(runs[-1].results)
            metrics["accuracy_drop"] = summary["team"]["accuracy"] - metrics["accuracy"]
            if "judge_score" in metrics:
                metrics["judge_score_drop"] = summary["team"]["judge_score"] - metrics["judge_score"]
            summary["ablation"][role] = metrics
    judge = ev.judge
    if judge is not None and ev.checkpoint is not None:  # judged work: against the untrained team
        runs.append(ev.run(untrained=True))
        summary["untrained"] = ev.summarize(runs[-1].results)
        summary["vs_untrained"] = compare_with_untrained(
            judge, ev.envs.problems, team.results, runs[-1].results
        )
    # The envs' counters (grader time-outs, judge calls of every run and of the comparison)
    env_metrics: dict[str, float] = {}
    compared = judge.pop_metrics() if judge is not None else {}
    for counters in [*(r.env_metrics for r in runs), ev.envs.pop_metrics(), compared]:
        for key, value in counters.items():
            env_metrics[key] = env_metrics.get(key, 0.0) + value
    summary["env_metrics"] = summarize_metrics(env_metrics)
    transcripts = [t for r in runs for t in r.transcripts]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with (out / "transcripts.jsonl").open("w") as f:
        for t in transcripts:
            f.write(json.dumps(t, default=str) + "\n")
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table (what ``marft eval`` prints)."""
    team = summary["team"]
    keys = [k for k in team if "/" not in k]  # per-route figures get lines of their own
    w = max([12, *(len(k) + 2 for k in keys)])  # judged work's metric names are long

    def row(name: str, m: dict[str, float], drop: str = "") -> str:
        return f"{name:<28}" + "".join(f"{m.get(k, float('nan')):>{w}.3f}" for k in keys) + f"{drop:>{w}}"

    lines = [f"{'team':<28}" + "".join(f"{k:>{w}}" for k in keys + ["drop"])]
    lines.append(row("trained team" if summary.get("checkpoint") else "base team", team))
    for role, m in summary["ablation"].items():
        lines.append(row(role + " -> base", m, f"{m['accuracy_drop']:.3f}"))
    if "untrained" in summary:
        base = summary["untrained"]
        lines.insert(2, row("untrained team", base))
        v = summary["vs_untrained"]
        lines.append(
            f"vs untrained (pairwise judge): win rate {v['win_rate']:.3f}, wins {v['wins']:.3f}; judge score "
            f"gain {v['raw_gain']:.3f}, at equal length {v['length_controlled_gain']:.3f}"
        )
    for key in (k for k in team if k.startswith("route_share/")):
        route = key.split("/", 1)[1]
        lines.append(f"route {route}: share {team[key]:.3f}, accuracy {team['route_accuracy/' + route]:.3f}")
    counters = summary.get("env_metrics")
    if counters:
        lines.append("env counters: " + ", ".join(f"{k} {v:g}" for k, v in counters.items()))
    return "\n".join(lines)

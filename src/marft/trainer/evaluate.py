"""Evaluation of a team on a problem set: accuracy, pass@k, majority vote, per-agent ablation.

Every problem is attempted ``samples`` times by the whole team (multi-turn up to ``env.horizon``,
as in training). The ablation re-runs the evaluation once per agent with that agent swapped back
to the base model (its adapter disabled), and reports how much accuracy drops.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from marft.config import Config, ConfigError
from marft.envs.base import make_env
from marft.envs.math.grading import extract_answer, grade, grader_counts, normalize
from marft.models.team_model import TeamModel, load_base, resolve_device, resolve_dtype
from marft.rollout.backends import BASE, ROLLOUT_BACKENDS
from marft.rollout.collector import Collector
from marft.runtime import configure_threads
from marft.team.graph import TeamGraph
from marft.trainer.checkpoint import load_adapter_weights, resolve_checkpoint
from marft.trainer.trainer import tiny_corpus


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority(answers: list[str | None]) -> str | None:
    """The most common answer, counting mathematically equal answers (``5``, ``5.0``) as one vote.

    Ties go to the answer seen first; None when no sample gave an answer.
    """
    clusters: list[list[str]] = []
    for a in answers:
        if not a:
            continue
        a = normalize(a)
        for c in clusters:
            if a == c[0] or grade("\\boxed{" + a + "}", c[0]):
                c.append(a)
                break
        else:
            clusters.append([a])
    return max(clusters, key=len)[0] if clusters else None


def load_adapters(model: TeamModel, checkpoint: str | Path) -> Path:
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
    """One problem's samples: whether each solved it, and each final answer."""

    index: int
    reference: str
    correct: list[bool]
    answers: list[str | None]


class Evaluator:
    """Runs a team (optionally from a checkpoint) over a problem set.

    Args:
        cfg: the team's config; its env must have a problem list (``problems``, ``reset_to``).
        checkpoint: run directory or checkpoint folder whose adapters to load (None: base model).
        samples: attempts per problem (K).
        limit: evaluate only the first N problems.
        batch: env copies run together.
        progress: show a progress bar.
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
        self.cfg, self.samples, self.progress = cfg, samples, progress
        self.graph = TeamGraph.from_config(cfg.team)
        probe = make_env(cfg.env.name, cfg.env.kwargs, self.graph)
        if not (hasattr(probe, "reset_to") and hasattr(probe, "problems")):
            raise ConfigError(
                "env.name", f"env {cfg.env.name!r} has no problem set; marft eval needs one such as 'math'"
            )
        self.n_problems = min(limit or len(probe.problems), len(probe.problems))
        self.per_chunk = max(1, batch // samples)
        n_envs = self.per_chunk * samples
        self.envs = [make_env(cfg.env.name, cfg.env.kwargs, self.graph) for _ in range(n_envs)]
        self.threads = configure_threads(cfg.run.torch_threads)
        device = resolve_device(cfg.model.device)
        dtype = resolve_dtype(cfg.model.dtype, device)
        base, tokenizer = load_base(cfg.model, corpus=tiny_corpus(cfg, probe), dtype=dtype)
        self.model = TeamModel(
            base, tokenizer, self.graph.roles, cfg.lora, dtype=dtype, device=device, with_critic=False
        )
        self.checkpoint = load_adapters(self.model, checkpoint) if checkpoint is not None else None
        self.backend = ROLLOUT_BACKENDS.get(cfg.sampling.backend)(self.model, cfg.sampling)
        graded = [a.role for a in self.graph.agents if a.graded]
        self.final_role = graded[-1] if graded else self.graph.roles[-1]

    @torch.no_grad()
    def run(self, swap_to_base: str | None = None) -> tuple[list[ProblemResult], list[dict[str, Any]]]:
        """Evaluate every problem; ``swap_to_base`` runs that agent on the bare base model."""
        K, n_envs = self.samples, len(self.envs)
        collector = Collector(
            self.envs,
            self.graph,
            self.model,
            self.backend,
            self.cfg.env,
            self.cfg.sampling,
            seed=self.cfg.run.seed,
            features=None,
            episodic=True,
            group_size=K,
            transcripts_per_iter=n_envs,
            adapter_of={swap_to_base: BASE} if swap_to_base else None,
        )
        results: list[ProblemResult] = []
        transcripts: list[dict[str, Any]] = []
        desc = "marft eval" + (f" ({swap_to_base} -> base)" if swap_to_base else "")
        bar = tqdm(total=self.n_problems, desc=desc, disable=not self.progress, dynamic_ncols=True)
        for start in range(0, self.n_problems, self.per_chunk):
            idx = list(range(start, min(start + self.per_chunk, self.n_problems)))
            # the last chunk may be short: its spare env copies repeat a problem and are ignored
            problems = [idx[min(b // K, len(idx) - 1)] for b in range(n_envs)]
            rollout = collector.collect(self.cfg.env.horizon, problems=problems)
            by_env = {t["env"]: t for t in rollout.transcripts}
            for j, p in enumerate(idx):
                correct, answers = [], []
                for b in range(j * K, (j + 1) * K):
                    last = by_env[b]["turns"][-1]
                    response = next(a["response"] for a in last["agents"] if a["role"] == self.final_role)
                    correct.append(bool(last["info"]["correct"][self.final_role]))
                    answers.append(extract_answer(response))
                    transcripts.append(
                        {"problem_index": p, "sample": b - j * K, "swap_to_base": swap_to_base, **by_env[b]}
                    )
                results.append(ProblemResult(p, self.envs[0].problems[p][1], correct, answers))
            bar.update(len(idx))
        bar.close()
        return results, transcripts

    def summarize(self, results: list[ProblemResult]) -> dict[str, float]:
        """accuracy (mean over all samples), pass@1, pass@K and maj@K."""
        K = self.samples
        out = {
            "accuracy": sum(sum(r.correct) for r in results) / (K * len(results)),
            "pass@1": sum(pass_at_k(K, sum(r.correct), 1) for r in results) / len(results),
        }
        if K > 1:
            out[f"pass@{K}"] = sum(pass_at_k(K, sum(r.correct), K) for r in results) / len(results)
            out[f"maj@{K}"] = sum(
                grade("\\boxed{" + top + "}", r.reference) for r in results if (top := majority(r.answers))
            ) / len(results)
        return out


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
    ``summary.json`` and ``transcripts.jsonl`` into ``out_dir``.

    Returns:
        The summary: metrics of the trained team, and per agent the metrics with that agent
        swapped back to the base model and the accuracy drop.
    """
    ev = Evaluator(cfg, checkpoint, samples, limit, batch, progress)
    grader_before = grader_counts()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, transcripts = ev.run()
    summary: dict[str, Any] = {
        "n_problems": ev.n_problems,
        "samples": samples,
        "checkpoint": str(ev.checkpoint) if ev.checkpoint else None,
        "model": cfg.model.name,
        "data": cfg.env.kwargs.get("data"),
        "team": ev.summarize(results),
        "ablation": {},
    }
    if ablation and ev.checkpoint is not None and len(ev.graph.roles) > 1:
        for role in ev.graph.roles:
            res, tr = ev.run(swap_to_base=role)
            metrics = ev.summarize(res)
            metrics["accuracy_drop"] = summary["team"]["accuracy"] - metrics["accuracy"]
            summary["ablation"][role] = metrics
            transcripts += tr
    # Time-outs and failures are scored as wrong answers: say how many there were.
    graded = grader_counts() - grader_before
    summary["grader"] = {"calls": graded.calls, "timeouts": graded.timeouts, "failures": graded.failures}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with (out / "transcripts.jsonl").open("w") as f:
        for t in transcripts:
            f.write(json.dumps(t, default=str) + "\n")
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table (what ``marft eval`` prints)."""
    team = summary["team"]
    keys = list(team)
    lines = [f"{'team':<28}" + "".join(f"{k:>12}" for k in keys + ["drop"])]
    name = "trained team" if summary.get("checkpoint") else "base team"
    lines.append(f"{name:<28}" + "".join(f"{team[k]:>12.3f}" for k in keys) + f"{'':>12}")
    for role, m in summary["ablation"].items():
        lines.append(
            f"{role + ' -> base':<28}"
            + "".join(f"{m[k]:>12.3f}" for k in keys)
            + f"{m['accuracy_drop']:>12.3f}"
        )
    g = summary.get("grader")
    if g:
        lines.append(
            f"grader: {g['calls']} calls, {g['timeouts']} time-outs, {g['failures']} failures"
            + (" (scored as wrong)" if g["timeouts"] or g["failures"] else "")
        )
    return "\n".join(lines)

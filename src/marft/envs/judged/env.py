"""The judged env: open-ended work (research briefs, slide decks) scored by rules and a judge model.

Each episode is one task and one team step. The graded agent's output (the last graded agent that
acted) is the response. Its reward (``docs/judged.md``)::

    reward = judge_weight * s_judge                  # judge score in [0, 1] (rules_gate: 0 if a rule fails)
           + rules_weight * (rules kept / rules set) # left out when the task sets no rules
           - length_penalty * max(0, words / target - 1)  # target: length_target, else max_words

The judge (``reward.judge``; by default the team's own base with adapters disabled) is bound by the
engine (:meth:`JudgedEnv.bind_judge`) and shared by every env copy; :meth:`JudgedEnv.step_batch`
judges all copies' responses in one batched call. A held-out judge (``reward.heldout_judge``)
scores the same responses for the reward-hacking guard but never the reward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from marft.config import ConfigError
from marft.envs.base import ENVS, Observation, StepResult
from marft.envs.judged.rules import check_rules, count_words
from marft.envs.judged.tasks import BUILT_IN, SPLITS, JudgedTask, load_tasks
from marft.envs.problems import ProblemEpisodes, missing_graded

SCORE_WORDS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "A", "B"]
"""Tokens a judge reads its score from (the built-in tiny tokenizer must know them)."""


@dataclass(frozen=True)
class JudgeRequest:
    """One response to judge: the task, its rubric, the response and, for a pairwise comparison,
    the response to compare it with (the score is then the probability that it is the better one)."""

    task: str
    rubric: str
    response: str
    reference: str | None = None


class Judging(Protocol):
    """What the env needs of a judge (:class:`marft.models.judge.Judge` is one): ``pairwise``
    judges compare with each task's reference."""

    pairwise: bool

    def score(self, requests: Sequence[JudgeRequest]) -> list[float]: ...

    def pop_metrics(self) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class JudgedConfig:
    """Arguments of :class:`JudgedEnv` (``env.kwargs``)."""

    data: str = "research"
    """A built-in task set (``research``, ``slides``) or a JSONL file of tasks (docs/judged.md)."""
    split: str = "train"
    """Built-in sets: ``train`` or ``heldout``."""
    limit: int | None = None
    """Use only the first N tasks."""
    instruction: str = "{prompt}"
    """The shared observation; ``{prompt}`` is replaced by the task's prompt."""
    judge_weight: float = 1.0
    """Weight of the judge's score (in [0, 1]) in the reward."""
    rules_weight: float = 0.5
    """Weight of the share of rule checks kept."""
    rules_gate: bool = False
    """The judge's score counts only when every rule is kept (format tricks earn nothing)."""
    length_penalty: float = 0.0
    """Penalty per unit of relative excess length: ``length_penalty * max(0, words / target - 1)``."""
    length_target: int | None = None
    """Target length in words for the penalty (None: the task's ``max_words``; no target: no penalty)."""
    pass_score: float = 0.5
    """A response is *accepted* (``correct``, marft eval's accuracy) when it keeps every rule and
    the judge scores it at least this."""

    def __post_init__(self) -> None:
        if self.data in BUILT_IN and self.split not in SPLITS:
            raise ConfigError("split", f"must be one of {', '.join(SPLITS)} for the built-in sets")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit", "must be a positive integer or null")
        for name in ("judge_weight", "rules_weight", "length_penalty"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "must be >= 0")
        if self.length_target is not None and self.length_target < 1:
            raise ConfigError("length_target", "must be a positive integer or null")
        if "{prompt}" not in self.instruction:
            raise ConfigError("instruction", "must contain {prompt}")
        try:
            load_tasks(self.data, self.split)  # a bad file fails here, before any model loads
        except ConfigError as e:  # named relative to env.kwargs (the caller adds the prefix)
            raise ConfigError(e.key.removeprefix("env.kwargs."), e.message) from None

    @staticmethod
    def check_team(cfg: JudgedConfig, team) -> tuple[str, str] | None:
        return missing_graded(team, "the agent whose work is judged")

    @staticmethod
    def check_reward(cfg: JudgedConfig, reward) -> tuple[str, str] | None:
        tasks = load_tasks(cfg.data, cfg.split)[: cfg.limit]
        missing = sum(t.reference is None for t in tasks)
        for key, judge in (("reward.judge", reward.judge), ("reward.heldout_judge", reward.heldout_judge)):
            if judge is not None and judge.mode == "pairwise" and missing:
                return (
                    f"{key}.mode",
                    f"pairwise judging compares with each task's reference, but {missing} of {len(tasks)} "
                    f"tasks in {cfg.data!r} have none; add 'reference' to each task or use pointwise",
                )
        held = reward.heldout_judge
        if held is not None and held.mode != reward.judge.mode:
            return (
                "reward.heldout_judge.mode",
                f"must be the training judge's mode ({reward.judge.mode}): the guard compares their scores",
            )
        return None


def length_excess(words: int, target: int | None) -> float:
    """Relative length beyond ``target`` words: ``max(0, words / target - 1)`` (0 without a target)."""
    return max(0.0, words / target - 1.0) if target else 0.0


def judged_reward(
    cfg: JudgedConfig, score: float, rules: Mapping[str, bool], words: int, target: int | None
) -> float:
    """The reward of one response (the module docstring's formula): ``score`` is the judge's, in
    [0, 1]; ``rules`` each rule's outcome; ``target`` the length beyond which the penalty runs."""
    judged = 0.0 if (cfg.rules_gate and not all(rules.values())) else score
    reward = cfg.judge_weight * judged - cfg.length_penalty * length_excess(words, target)
    if rules:
        reward += cfg.rules_weight * sum(rules.values()) / len(rules)
    return reward


@dataclass
class _Pending:
    """A copy's step between its rule checks and its judge score."""

    role: str | None
    response: str
    rules: dict[str, bool]
    words: int


@ENVS.register("judged")
class JudgedEnv(ProblemEpisodes):
    """Open-ended tasks scored by rule checks and a judge model (see the module docstring)."""

    Config = JudgedConfig

    def __init__(self, config: JudgedConfig) -> None:
        super().__init__()
        self.cfg = config
        tasks = load_tasks(config.data, config.split)
        self.problems: tuple[JudgedTask, ...] = tasks[: config.limit] if config.limit else tasks
        self.judge: Judging | None = None
        self.heldout_judge: Judging | None = None
        self._owner = False
        self._counters: dict[str, float] = {}

    def bind_judge(self, judge: Judging, heldout: Judging | None = None, owner: bool = True) -> None:
        """Use ``judge`` for the reward and ``heldout`` (if any) for the guard (called by the engine
        with the judges every copy shares; the ``owner`` copy keeps their caches in its state)."""
        self.judge, self.heldout_judge, self._owner = judge, heldout, owner

    def state_dict(self) -> dict:
        """The episode state, and in the owner copy the shared judges' score caches (a resumed run
        scores, batches and counts exactly as the uninterrupted one)."""
        state = super().state_dict()
        if self._owner:
            state["judges"] = [j.state_dict() for j in (self.judge, self.heldout_judge) if j is not None]
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        judges = [j for j in (self.judge, self.heldout_judge) if j is not None]
        for judge, saved in zip(judges, state.get("judges", []), strict=False):
            judge.load_state_dict(saved)

    @property
    def task(self) -> JudgedTask:
        return self.problems[self.index]

    def vocabulary(self) -> list[str]:
        """Every prompt, rubric, reference and rule word, and the score tokens (the tiny tokenizer
        is trained on them)."""
        words = [
            " ".join([t.prompt, t.rubric, t.reference or "", *t.rules.required, *t.rules.forbidden])
            for t in self.problems
        ]
        return words + SCORE_WORDS

    def task_observation(self, task: str) -> Observation:
        """A user's brief, in the env's instruction."""
        return Observation(text=self.cfg.instruction.format(prompt=task))

    def _observe(self) -> Observation:
        return self.task_observation(self.task.prompt)

    def pop_metrics(self) -> dict[str, float]:
        """Since the last call (summed over copies; ``X.sum`` / ``X.n`` pairs are means): judge
        score, held-out judge score, rule pass rate, response words, and the judge's own counters."""
        out, self._counters = self._counters, {}
        return out

    def _add(self, values: Mapping[str, float], mean: bool = True) -> None:
        for key, value in values.items():
            if mean:
                self._counters[f"{key}.sum"] = self._counters.get(f"{key}.sum", 0.0) + float(value)
                self._counters[f"{key}.n"] = self._counters.get(f"{key}.n", 0.0) + 1.0
            else:
                self._counters[key] = self._counters.get(key, 0.0) + float(value)

    # --------------------------------------------------------------------------------- steps

    def step(self, actions: Mapping[str, str]) -> StepResult:
        return self.step_batch([self], [actions])[0]  # type: ignore[return-value]

    def _prepare(self, actions: Mapping[str, str]) -> _Pending:
        if not self.graded_roles:
            raise RuntimeError(
                "JudgedEnv.bind_team was not called: the env does not know which agent is graded"
            )
        if self.judge is None:
            raise RuntimeError("JudgedEnv.bind_judge was not called: the env has no judge")
        graded = [role for role in actions if role in self.graded_roles]
        role = graded[-1] if graded else None
        response = actions[role] if role is not None else ""
        rules = check_rules(response, self.task.rules)
        if role is None:  # no graded agent acted (a routing team): no response keeps a rule
            rules = dict.fromkeys(rules, False)
        return _Pending(role, response, rules, count_words(response))

    def request(self, response: str, reference: str | None = None) -> JudgeRequest:
        """The judge request for ``response`` on the current task (``reference``: compare with it)."""
        return JudgeRequest(self.task.prompt, self.task.rubric, response, reference)

    def _finish(self, p: _Pending, score: float, heldout: float | None) -> StepResult:
        cfg, task = self.cfg, self.task
        kept = all(p.rules.values())
        target = cfg.length_target or task.rules.max_words
        reward = judged_reward(cfg, score, p.rules, p.words, target)
        metrics = {"judge_score": score, "rules_pass": float(kept), "response_words": float(p.words)}
        if heldout is not None:
            metrics["heldout_score"] = heldout
        self._add(metrics)
        self._add({"graded_missing": float(p.role is None)}, mean=False)
        info = {
            "task_index": self.index,
            "judged_role": p.role,
            "rules": p.rules,
            "length_excess": length_excess(p.words, target),
            "metrics": metrics,
        }
        return StepResult(
            observation=self._observe(),
            rewards=reward,
            done=True,
            info=info,
            correct=kept and score >= cfg.pass_score,
        )

    @classmethod
    def step_batch(
        cls, envs: Sequence[JudgedEnv], actions: Sequence[Mapping[str, str]]
    ) -> list[StepResult | Exception]:
        """Step every copy at once: rule checks per copy, then one batched call of each judge."""
        pending: list[_Pending | Exception] = []
        for env, act in zip(envs, actions, strict=True):
            try:
                pending.append(env._prepare(act))
            except Exception as e:  # noqa: BLE001 (that copy's episode fails, not the batch)
                pending.append(e)
        live = [(env, p) for env, p in zip(envs, pending, strict=True) if not isinstance(p, Exception)]
        if not live:
            return list(pending)  # type: ignore[arg-type]
        judge, heldout = live[0][0].judge, live[0][0].heldout_judge
        asked = [(env, p) for env, p in live if p.role is not None]  # nobody graded acted: score 0

        def scores_of(j: Judging) -> dict[int, float]:
            requests = [
                env.request(p.response, env.task.reference if j.pairwise else None) for env, p in asked
            ]
            return {id(p): s for (_, p), s in zip(asked, j.score(requests), strict=True)}

        try:
            scores = scores_of(judge)
            held = scores_of(heldout) if heldout is not None else {}
        except Exception as e:  # noqa: BLE001 (the judge failed: every judged episode fails, the run decides)
            return [p if isinstance(p, Exception) else e for p in pending]
        counters = live[0][0]  # the shared judges' counters go to one copy (copies' counters are summed)
        counters._add(judge.pop_metrics(), mean=False)
        if heldout is not None:
            counters._add(heldout.pop_metrics(), mean=False)
        return [
            # a copy whose graded agent did not act scores 0 with both judges (means over the same copies)
            p
            if isinstance(p, Exception)
            else env._finish(p, scores.get(id(p), 0.0), held.get(id(p), 0.0) if heldout else None)
            for env, p in zip(envs, pending, strict=True)
        ]

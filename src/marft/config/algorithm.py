"""The ``algorithm`` section: the RL algorithm and its hyper-parameters, each checked on its own
(checks against the registries live in :mod:`marft.compose`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from marft.config.errors import _check


@dataclass
class AlgorithmConfig:
    """The RL algorithm and its hyper-parameters."""

    name: str = "appo"
    """A registered algorithm: appo, tppo, grpo, dr_grpo, rloo, reinforce_pp
    (``marft.trainer.ALGORITHMS``)."""
    advantage_estimator: str | None = None
    """Group-relative algorithms: the estimator (``marft.algorithms.ADVANTAGE_ESTIMATORS``); None: the
    algorithm's own."""
    policy_loss: str = "ppo_clip"
    """The policy loss (``marft.algorithms.POLICY_LOSSES``): ppo_clip or vanilla_pg."""
    loss_agg_mode: Literal["token-mean", "seq-mean-token-sum", "action-mean"] | None = None
    """How the policy loss aggregates (verl's ``loss_agg_mode``): ``token-mean``, a ratio per token
    and the mean over every token of a minibatch; ``seq-mean-token-sum``, a ratio per token, summed
    per sequence and averaged over sequences; ``action-mean``, a ratio per action (its log-prob, see
    ``logprob_norm``) and the mean over actions (not with per-token advantages: tppo). None: the
    algorithm's own (appo: action-mean; tppo and the group-relative algorithms: token-mean)."""
    group_size: int = 8
    """Group-relative algorithms: rollouts per task instance (env.n_envs must be a multiple)."""
    group_baseline: Literal["episode", "agent", "agent_turn", "nested"] = "episode"
    """Group-relative algorithms: what an action is compared with. ``episode``: every action of a
    rollout gets the rollout's advantage against its whole group; ``agent``: each agent's advantage
    is formed over the group's rollouts in which it acted, with their statistics only (agent-wise
    normalisation, Dr. MAS); ``agent_turn``: each agent's action at step t against the same agent's
    actions at step t of the group, on the return from t on (AT-GRPO). In a static team of one step
    these three are the same (:mod:`marft.algorithms.group_baselines`). ``nested``: the group is a
    tree that branches at each depth of the graph (``branching``): each action is compared with its
    sibling subtrees, so an upstream agent (a planner) is credited with how much better its
    message did than the other messages for the same task."""
    branching: list[int] = field(default_factory=list)
    """``group_baseline: nested``: the branching factor of each depth of the team's graph, e.g.
    ``[2, 4]``: 2 plans per task, 4 answers per plan; the product is ``group_size``. Only the
    first env copy of each branch generates its depth's action (:mod:`marft.rollout.nested`)."""
    gamma: float = 1.0
    """Discount over (step, agent) micro-steps."""
    lam: float = 0.95
    """GAE lambda."""
    token_gamma: float = 1.0
    """TPPO: discount between tokens inside an action (gamma reproduces the reference's decay)."""
    token_lam: float = 1.0
    """TPPO: GAE lambda between tokens inside an action."""
    clip_eps: float = 0.2
    """PPO ratio clip."""
    value_clip_eps: float | None = 0.2
    """Clip of the value update around the old values (None: off)."""
    value_loss: Literal["huber", "mse"] = "huber"
    """Value regression loss: symmetric Huber or 0.5 * squared error."""
    huber_delta: float = 1.0
    """Huber threshold."""
    entropy_coef: float = 0.0
    """Entropy bonus weight."""
    policy_lr: float = 1e-3
    """Learning rate of every agent's adapter."""
    critic_lr: float = 1e-3
    """Learning rate of the value head."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    ppo_epochs: int = 2
    """Passes over each rollout."""
    num_minibatches: int = 1
    """Optimizer steps per epoch and agent."""
    micro_batch_size: int = 64
    """Sequences per forward/backward; gradients accumulate up to a minibatch (bounds memory)."""
    micro_batch_tokens: int = 0
    """If > 0, also cap a micro-batch at this many padded tokens, so memory stays bounded however
    long prompts grow (later agents in a chain see every earlier output)."""
    minibatch_groups: bool = True
    """Group-relative algorithms: draw minibatches by whole groups (every row of a task instance's
    group, every agent's, in one minibatch), so that each optimizer step sees advantages that sum
    to zero per group; False: rows are drawn one by one, and a group may be split across steps."""
    policy_step: Literal["per_adapter", "mixed"] = "per_adapter"
    """How the training agents' adapters take a step: ``per_adapter``, one adapter after another
    under PEFT's active adapter; ``mixed``, every adapter's minibatch in one forward and one
    backward on the shared base (each row under its own adapter, by gathered LoRA), then each
    adapter's own clip and optimizer step. The same update up to float32 rounding. ``mixed`` saves
    a forward and a backward per extra adapter, which pays where a step is bound by kernel launches
    (small models on a GPU); on CPU it measured no faster (``benchmarks/README.md``). It falls back
    to ``per_adapter``, with a warning, for LoRA variants (DoRA) and LoRA on layers other than
    ``nn.Linear``."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip per agent and for the critic."""
    normalize_advantages: bool = True
    """Standardise advantages over the real entries of the batch (critic-based algorithms)."""
    normalize_scope: Literal["batch", "agent"] = "batch"
    """With ``normalize_advantages``: over every agent's entries together (``batch``), or each
    agent's over its own actions (``agent``: agent-wise normalisation, Dr. MAS), so an agent that
    acts rarely (a routed expert) is not scaled by the others' spread."""
    target_kl: float | None = None
    """Stop an agent's epochs early once its approximate KL exceeds this (None: off)."""
    logprob_norm: Literal["sum", "token_mean", "word_mean"] = "sum"
    """An action's log-prob: sum of token log-probs, or divided by its token or word count."""
    critic_warmup_iters: int = 0
    """First iterations that train only the critic."""
    agent_by_agent: int = 0
    """If K > 0, only one trainable agent updates at a time, switching every K iterations."""
    recompute_old_logprobs: bool | None = None
    """Recompute old log-probs with the learner's forward before the epochs. None: only for a
    half-precision base, where the sampler's cached forward rounds differently (fp32: exact)."""
    kl_coef: float = 0.0
    """Weight of the KL anchor to the reference policy (the base with adapters disabled); 0: off."""
    kl_mode: Literal["loss", "penalty"] = "loss"
    """``loss``: add ``kl_coef * KL`` to the policy loss; ``penalty``: subtract it from the rewards."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator (k1 = log ratio, k3 = exp(-log ratio) - 1 + log ratio)."""
    value_head_hidden: int = 128
    """Width of the value head's hidden layer (0: a linear head)."""
    critic_base: str | None = None
    """A team of several bases (``models``): the base whose final hidden state the critic's value
    head reads (APPO); every agent's prompt is also rendered with that base's chat template for it.
    None: the first base."""
    rollout_correction: Literal["none", "tis"] = "none"
    """Correct for the gap between the sampler's and the learner's log-probs (a separate engine
    such as vLLM): ``tis`` weights each token's (or action's) advantage by the truncated importance
    ratio ``min(pi_learner / pi_sampler, tis_cap)`` (Yao et al. 2025)."""
    tis_cap: float = 2.0
    """Upper bound of the truncated importance ratio."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.gamma <= 1.0, "gamma", "must be in [0, 1]")
        _check(0.0 <= self.lam <= 1.0, "lam", "must be in [0, 1]")
        _check(self.clip_eps > 0, "clip_eps", "must be > 0")
        _check(
            self.value_clip_eps is None or self.value_clip_eps > 0, "value_clip_eps", "must be > 0 or null"
        )
        _check(self.huber_delta > 0, "huber_delta", "must be > 0")
        _check(self.policy_lr > 0, "policy_lr", "must be > 0")
        _check(self.critic_lr > 0, "critic_lr", "must be > 0")
        _check(self.ppo_epochs > 0, "ppo_epochs", "must be a positive integer")
        _check(self.num_minibatches > 0, "num_minibatches", "must be a positive integer")
        _check(self.micro_batch_size > 0, "micro_batch_size", "must be a positive integer")
        _check(self.micro_batch_tokens >= 0, "micro_batch_tokens", "must be >= 0 (0 turns it off)")
        _check(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        _check(self.target_kl is None or self.target_kl > 0, "target_kl", "must be > 0 or null")
        _check(self.critic_warmup_iters >= 0, "critic_warmup_iters", "must be >= 0")
        _check(self.agent_by_agent >= 0, "agent_by_agent", "must be >= 0 (0 trains all agents together)")
        _check(self.group_size >= 1, "group_size", "must be a positive integer")
        nested = self.group_baseline == "nested"
        _check(
            not nested or (self.branching and min(self.branching) >= 1),
            "branching",
            "group_baseline=nested needs a positive branching factor per depth of the graph, e.g. [2, 4]",
        )
        _check(
            not self.branching or nested, "branching", "only group_baseline=nested branches (set it to [])"
        )
        _check(
            not nested or math.prod(self.branching) == self.group_size,
            "branching",
            f"the product of {self.branching} must equal group_size={self.group_size}",
        )
        _check(0.0 <= self.token_gamma <= 1.0, "token_gamma", "must be in [0, 1]")
        _check(0.0 <= self.token_lam <= 1.0, "token_lam", "must be in [0, 1]")
        _check(self.kl_coef >= 0, "kl_coef", "must be >= 0 (0 turns the KL anchor off)")
        _check(self.value_head_hidden >= 0, "value_head_hidden", "must be >= 0")
        _check(self.tis_cap >= 1.0, "tis_cap", "must be >= 1")

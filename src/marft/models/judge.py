"""A judge: a frozen language model that scores a response against a rubric.

The score is G-Eval's (Liu et al. 2023, "G-Eval: NLG Evaluation using GPT-4 with Better Human
Alignment"): the expected value of the score under the judge's next-token probabilities of the
score tokens ``1 .. max_score`` after the prompt, renormalised over those tokens. It is smooth in
the judge's beliefs and deterministic (one forward, no sampling), unlike a parse of sampled text.
The pairwise mode asks which of two responses meets the rubric better and averages both orders
(LLM judges prefer one position; Zheng et al. 2023, "Judging LLM-as-a-Judge"), giving the
probability that the response beats the other.

One :class:`Judge` serves every env copy: requests come in batches (``score``), prompts are built
with the judge's own chat template, scored ``batch_size`` at a time, and cached by a hash of their
text, so a repeated prompt costs nothing. By default the judge is the team's own base model with
every adapter disabled: no second model in memory.

Example:
    >>> judge = Judge(JudgeConfig(), model, tokenizer, name="base")          # doctest: +SKIP
    >>> judge.score([JudgeRequest("Summarise X.", "Accurate and short.", "X is ...")])  # doctest: +SKIP
    [0.62]
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

from marft.config import JudgeConfig
from marft.envs.judged.env import JudgeRequest
from marft.envs.judged.rules import repeated_share
from marft.models.sequences import position_ids_from_mask


def expected_score(option_logprobs: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """The expected option value under the judge's probabilities, renormalised over the options.

    Args:
        option_logprobs: ``[B, K]`` log-probabilities (under the full vocabulary) of each of K
            options at the reply's first position.
        values: ``[K]`` the value of each option (scores 1..K, or 1 and 0 for "A" / "B").

    Returns:
        ``(expected [B], mass [B])``: the expected value, and the probability the judge put on the
        options at all (low mass: the judge wanted to say something else; the score is then weak).
    """
    logp = option_logprobs.float()
    # renormalise in log space: exp() of very unlikely options underflows to 0 (then 0 / 0)
    expected = (logp.softmax(-1) * values.float()).sum(-1)
    return expected, logp.logsumexp(-1).exp()


def option_token_ids(tokenizer, options: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Every token id that writes each option as the first token of the reply: the option alone,
    after a space, and the vocabulary's own token for it (SentencePiece tokenizers encode ``"1"``
    as ``"▁", "1"``, yet have a ``"1"`` token).

    Returns:
        ``(ids [K, M], valid [K, M])``: option k's spellings, padded with its first.

    Raises:
        ValueError: an option that no single known token writes (its score could not be read in
            one step).
    """
    rows = []
    for option in options:
        ids: list[int] = []
        for text in (option, " " + option):
            tokens = tokenizer.encode(text, add_special_tokens=False)
            if len(tokens) == 1:
                ids.append(tokens[0])
        for token in (option, "▁" + option, "Ġ" + option):
            found = tokenizer.convert_tokens_to_ids(token)
            if isinstance(found, int):
                ids.append(found)
        ids = sorted({i for i in ids if i != tokenizer.unk_token_id})
        if not ids:
            raise ValueError(
                f"the judge's tokenizer has no single token for the score {option!r}; use a model "
                "whose tokenizer has a token per digit and letter, or lower reward.judge.max_score"
            )
        rows.append(ids)
    width = max(map(len, rows))
    valid = torch.tensor([[j < len(r) for j in range(width)] for r in rows])
    return torch.tensor([r + r[:1] * (width - len(r)) for r in rows]), valid


class Judge:
    """Scores responses against rubrics with a frozen causal LM (see the module docstring).

    Args:
        cfg: the judge's config (``reward.judge`` or ``reward.heldout_judge``).
        model: a causal LM (called with ``input_ids``, ``attention_mask``, ``position_ids``,
            ``logits_to_keep``).
        tokenizer: its tokenizer (a chat template, left padding).
        name: identifies the model in cache keys and metrics.
        frozen: a context in which ``model`` is the judge (the team's base: adapters disabled).
        prefix: of its metrics' names (``judge_calls``, ``time_judge_s``, ...).
    """

    def __init__(
        self,
        cfg: JudgeConfig,
        model,
        tokenizer,
        name: str,
        frozen: Callable[[], AbstractContextManager] = nullcontext,
        prefix: str = "judge",
    ) -> None:
        self.prefix = prefix
        self.cfg, self.model, self.tokenizer, self.name, self.frozen = cfg, model, tokenizer, name, frozen
        self.pairwise = cfg.mode == "pairwise"
        self.device = next(model.parameters()).device
        scores = [str(k) for k in range(1, cfg.max_score + 1)]
        self._score_ids = [t.to(self.device) for t in option_token_ids(tokenizer, scores)]
        self._score_values = torch.arange(1, cfg.max_score + 1, device=self.device)
        self._pair_ids = [t.to(self.device) for t in option_token_ids(tokenizer, ["A", "B"])]
        self._pair_values = torch.tensor([1.0, 0.0], device=self.device)
        # what a cached score depends on besides the prompt: the model and the options read
        spellings = (self._score_ids[0].tolist(), self._pair_ids[0].tolist())
        self._fingerprint = f"{name}\0{cfg.max_score}\0{spellings}"
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._counters = self._zero()

    def _zero(self) -> dict[str, float]:
        p = self.prefix
        keys = (f"{p}_calls", f"{p}_cache_hits", f"time_{p}_s", f"{p}_cut")
        means = (f"{p}_option_mass.sum", f"{p}_option_mass.n", f"{p}_repeated.sum", f"{p}_repeated.n")
        return dict.fromkeys((*keys, *means), 0.0)

    def state_dict(self) -> dict:
        """The score cache (a resumed run then scores, batches and counts exactly as before)."""
        return {"fingerprint": self._fingerprint, "cache": list(self._cache.items())}

    def load_state_dict(self, state: dict) -> None:
        """Add a saved cache to this one (several rollout workers' caches merge into one judge);
        another judge's scores (other model or options) are ignored."""
        if state.get("fingerprint") == self._fingerprint:
            self._cache.update(state["cache"])
            while len(self._cache) > self.cfg.cache_size:
                self._cache.popitem(last=False)

    def pop_metrics(self) -> dict[str, float]:
        """Since the last call (names start with the prefix): prompts forwarded (``judge_calls``),
        prompts answered from the cache, seconds spent (``time_judge_s``), responses cut to
        ``max_response_tokens``, the mean probability the judge put on the score tokens
        (``judge_option_mass.sum`` / ``.n``) and the mean share of repeated trigrams of the responses
        (``judge_repeated``)."""
        out, self._counters = self._counters, self._zero()
        return out

    # ------------------------------------------------------------------------------ scoring

    def score(self, requests: Sequence[JudgeRequest]) -> list[float]:
        """Scores in [0, 1]: pointwise ``(E[score] - 1) / (max_score - 1)``; with a ``reference``,
        the probability that the response is the better one (mean of both orders); then less
        ``redundancy_penalty`` times the response's share of repeated trigrams, clipped at 0."""
        prompts: list[str] = []
        for r in requests:
            response = self._cut(r.response)
            if r.reference is None:
                prompts.append(self._prompt(self._pointwise(r.task, r.rubric, response)))
            else:
                reference = self._cut(r.reference)
                prompts.append(self._prompt(self._pairwise(r.task, r.rubric, response, reference), True))
                prompts.append(self._prompt(self._pairwise(r.task, r.rubric, reference, response), True))
        values = iter(self._values(prompts, pairwise=[r.reference is not None for r in requests]))
        out = []
        top = self.cfg.max_score - 1
        for r in requests:
            if r.reference is None:
                out.append((next(values) - 1.0) / top)
            else:  # P(response wins) as A, and as B (1 - P(A wins) when it is B)
                first, second = next(values), next(values)
                out.append(0.5 * (first + (1.0 - second)))
        repeated = [repeated_share(r.response) for r in requests]
        self._counters[f"{self.prefix}_repeated.sum"] += sum(repeated)
        self._counters[f"{self.prefix}_repeated.n"] += len(repeated)
        penalty = self.cfg.redundancy_penalty
        return [max(0.0, s - penalty * share) for s, share in zip(out, repeated, strict=True)]

    def _pointwise(self, task: str, rubric: str, response: str) -> str:
        return self.cfg.template.format(
            task=task, rubric=rubric, response=response, max_score=self.cfg.max_score
        )

    def _pairwise(self, task: str, rubric: str, a: str, b: str) -> str:
        return self.cfg.pairwise_template.format(task=task, rubric=rubric, a=a, b=b)

    def _prompt(self, user: str, pairwise: bool = False) -> str:
        messages = [{"role": "system", "content": self.cfg.system_prompt}, {"role": "user", "content": user}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + (self.cfg.pairwise_answer_prefix if pairwise else self.cfg.answer_prefix)

    def _cut(self, response: str) -> str:
        ids = self.tokenizer.encode(response, add_special_tokens=False)
        if len(ids) <= self.cfg.max_response_tokens:
            return response
        self._counters[f"{self.prefix}_cut"] += 1
        return self.tokenizer.decode(ids[: self.cfg.max_response_tokens])

    def _values(self, prompts: list[str], pairwise: list[bool]) -> list[float]:
        """The expected option value of each prompt (cached by content hash)."""
        kinds = [p for p in pairwise for _ in range(2 if p else 1)]
        keys = [self._key(p, k) for p, k in zip(prompts, kinds, strict=True)]
        found = {key: self._cache[key] for key in keys if key in self._cache}
        todo = {key: (p, k) for key, p, k in zip(keys, prompts, kinds, strict=True) if key not in found}
        self._counters[f"{self.prefix}_cache_hits"] += len(keys) - len(todo)
        if todo:
            t0 = time.perf_counter()
            items = sorted(todo.items(), key=lambda kv: len(kv[1][0]))  # similar lengths: less padding
            for i in range(0, len(items), self.cfg.batch_size):
                chunk = items[i : i + self.cfg.batch_size]
                for pair in (False, True):
                    part = [(key, p) for key, (p, k) in chunk if k is pair]
                    if part:
                        found.update(self._forward(part, pair))
            self._counters[f"{self.prefix}_calls"] += len(todo)
            self._counters[f"time_{self.prefix}_s"] += time.perf_counter() - t0
            for key in todo:
                self._cache[key] = found[key]
            while len(self._cache) > self.cfg.cache_size:
                self._cache.popitem(last=False)
        return [found[key] for key in keys]

    def _key(self, prompt: str, pairwise: bool) -> bytes:
        text = f"{self._fingerprint}\0{int(pairwise)}\0{prompt}".encode()
        key = hashlib.blake2b(text, digest_size=16).digest()  # 16 bytes: a small cache to checkpoint
        if key in self._cache:
            self._cache.move_to_end(key)
        return key

    @torch.no_grad()
    def _forward(self, part: list[tuple[bytes, str]], pairwise: bool) -> dict[bytes, float]:
        """One batched forward: the expected option value of each ``(key, prompt)``."""
        enc = self.tokenizer(
            [p for _, p in part], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        training = self.model.training
        self.model.eval()  # no dropout: the same prompt always gets the same score
        with self.frozen():
            logits = self.model(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                position_ids=position_ids_from_mask(enc["attention_mask"]),
                logits_to_keep=1,
                use_cache=False,
            ).logits[:, -1]
        self.model.train(training)
        logp = logits.float().log_softmax(-1)  # [b, V]: freed at once, only [b, K] is kept
        (ids, valid), values = (
            (self._pair_ids, self._pair_values) if pairwise else (self._score_ids, self._score_values)
        )
        # [b, K]: every spelling of each option (the padding spellings masked out)
        option_logprobs = logp[:, ids].masked_fill(~valid, float("-inf")).logsumexp(-1)
        expected, mass = expected_score(option_logprobs, values)
        self._counters[f"{self.prefix}_option_mass.sum"] += float(mass.sum())
        self._counters[f"{self.prefix}_option_mass.n"] += len(part)
        return {key: value for (key, _), value in zip(part, expected.tolist(), strict=True)}

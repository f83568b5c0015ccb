"""The judge: G-Eval's expected score (by hand), deterministic and cached, pairwise both orders,
the team's base with adapters off, and a judge model loaded by name."""

import dataclasses

import pytest
import torch

from marft.compose import build_judge, load_config
from marft.config import JudgeConfig, LoraSettings, ModelConfig, TinyModelConfig
from marft.config.reward import PAIRWISE_TEMPLATE, POINTWISE_TEMPLATE
from marft.envs.judged import JudgeRequest
from marft.envs.judged.env import SCORE_WORDS
from marft.models import TeamModel, load_base
from marft.models.judge import Judge, expected_score

CORPUS = [
    "write a deck on tides for sailors",
    "short clear correct bullets",
    "tides rise and fall twice a day because the moon pulls the sea",
    "cats are nice",
    POINTWISE_TEMPLATE,
    PAIRWISE_TEMPLATE,
    JudgeConfig().system_prompt,
    *SCORE_WORDS,
]
TASK, RUBRIC = "write a deck on tides for sailors", "short clear correct bullets"
GOOD = "tides rise and fall twice a day because the moon pulls the sea"


def tiny_team():
    base, tok = load_base(ModelConfig(name="tiny", tiny=TinyModelConfig(initializer_range=0.2)), CORPUS)
    lora = LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    return TeamModel(base, tok, ["writer"], lora, value_head_width=16)


@pytest.fixture(scope="module")
def team():
    return tiny_team()


def base_judge(team, **kw):
    cfg = JudgeConfig(**kw)
    return Judge(cfg, team.policy, team.tokenizer, "base", frozen=lambda: team.adapter(None))


def test_expected_score_by_hand():
    # p = (0.1, 0.2, 0.1) on options valued 1, 2, 3 (mass 0.4): E = (0.1 + 0.4 + 0.3) / 0.4 = 2
    logp = torch.tensor([[0.1, 0.2, 0.1], [0.5, 0.0, 0.5]]).log()
    expected, mass = expected_score(logp, torch.tensor([1.0, 2.0, 3.0]))
    assert expected.tolist() == pytest.approx([2.0, 2.0])
    assert mass.tolist() == pytest.approx([0.4, 1.0])


def test_the_score_is_the_expected_score_of_one_unbatched_forward(team):
    judge = base_judge(team)
    requests = [JudgeRequest(TASK, RUBRIC, GOOD), JudgeRequest(TASK, RUBRIC, "cats are nice")]
    scores = judge.score(requests)
    tok = team.tokenizer
    for request, score in zip(requests, scores, strict=True):  # naive: one prompt, full softmax, a loop
        text = judge._prompt(judge._pointwise(request.task, request.rubric, request.response))
        ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
        with torch.no_grad(), team.adapter(None):
            probs = team.policy(input_ids=ids).logits[0, -1].softmax(-1)
        digits = torch.tensor([probs[tok.convert_tokens_to_ids(str(k))] for k in range(1, 6)])
        naive = float((digits * torch.arange(1, 6)).sum() / digits.sum())
        assert score == pytest.approx((naive - 1) / 4, abs=1e-5)


def test_the_score_is_deterministic_and_cached(team):
    judge = base_judge(team)
    requests = [JudgeRequest(TASK, RUBRIC, GOOD), JudgeRequest(TASK, RUBRIC, "cats are nice")]
    first = judge.score(requests)
    assert judge.pop_metrics()["judge_calls"] == 2
    again = judge.score(list(reversed(requests)))  # from the cache: no forward at all
    metrics = judge.pop_metrics()
    assert metrics["judge_calls"] == 0 and metrics["judge_cache_hits"] == 2
    assert again == list(reversed(first))
    judge._cache.clear()  # recomputed in another batch composition: the same score
    mixed = judge.score([requests[0], JudgeRequest(TASK, RUBRIC, "tides tides")])
    assert mixed[0] == pytest.approx(first[0], abs=1e-6)
    assert judge.pop_metrics()["judge_calls"] == 2
    # a resumed run gets the cache back from the checkpoint
    fresh = base_judge(team)
    fresh.load_state_dict(judge.state_dict())
    assert fresh.score([requests[0]]) == [mixed[0]] and fresh.pop_metrics()["judge_calls"] == 0


def test_pairwise_averages_both_orders(team):
    judge = base_judge(team)
    ab = judge.score([JudgeRequest(TASK, RUBRIC, GOOD, reference="cats are nice")])[0]
    tok = team.tokenizer

    def p_a(first, second):  # naive: P("A") / (P("A") + P("B")) after one prompt, one forward
        text = judge._prompt(judge._pairwise(TASK, RUBRIC, first, second), True)
        with torch.no_grad(), team.adapter(None):
            probs = team.policy(input_ids=torch.tensor([tok.encode(text, add_special_tokens=False)])).logits[
                0, -1
            ]
        probs = probs.softmax(-1)
        a, b = (probs[tok.encode(x, add_special_tokens=False)[0]] for x in "AB")
        return float(a / (a + b))

    # the response wins as A in the first order and as B in the second
    naive = 0.5 * (p_a(GOOD, "cats are nice") + 1 - p_a("cats are nice", GOOD))
    assert ab == pytest.approx(naive, abs=1e-5)
    ba = judge.score([JudgeRequest(TASK, RUBRIC, "cats are nice", reference=GOOD)])[0]
    assert 0.0 < ab < 1.0
    assert ab + ba == pytest.approx(1.0)  # P(a beats b) + P(b beats a) = 1: no position bias left
    assert judge.pop_metrics()["judge_calls"] == 2  # the second comparison reuses both prompts


def test_the_base_judge_ignores_the_adapters(team):
    judge = base_judge(team, cache_size=0)
    before = judge.score([JudgeRequest(TASK, RUBRIC, GOOD)])
    with torch.no_grad():
        for name, p in team.policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)  # a trained adapter changes the policy...
    after = judge.score([JudgeRequest(TASK, RUBRIC, GOOD)])
    assert after == pytest.approx(before, abs=1e-6)  # ...but not the judge
    with torch.no_grad():
        for name, p in team.policy.named_parameters():
            if "lora_B" in name:
                p.sub_(0.5)


def test_long_responses_are_cut_and_counted(team):
    judge = base_judge(team, max_response_tokens=3)
    judge.score([JudgeRequest(TASK, RUBRIC, GOOD)])
    assert judge.pop_metrics()["judge_cut"] == 1


def test_a_judge_model_loaded_by_name(tmp_path, team):
    folder = tmp_path / "judge-model"
    base, tok = load_base(ModelConfig(name="tiny", tiny=TinyModelConfig(initializer_range=0.2)), CORPUS)
    base.save_pretrained(folder)  # the team's base, rebuilt from its seed
    tok.save_pretrained(folder)
    cfg = load_config("slides_team", ["model.name=tiny"])
    named = build_judge(cfg, dataclasses.replace(cfg.reward.judge, model=str(folder)), team)
    ours = base_judge(team, **{k: v for k, v in vars(cfg.reward.judge).items() if k != "model"})
    request = [JudgeRequest(TASK, RUBRIC, GOOD)]
    assert named.name == str(folder) and named.model is not team.policy
    assert not any(p.requires_grad for p in named.model.parameters())
    assert named.score(request) == pytest.approx(ours.score(request), abs=1e-5)  # same weights, same score


def test_score_tokens_must_be_single_known_tokens(team):
    from marft.models.judge import option_token_ids

    ids, valid = option_token_ids(team.tokenizer, ["1", "A"])
    assert ids.shape == valid.shape and valid[:, 0].all()
    assert ids[0, 0] == team.tokenizer.convert_tokens_to_ids("1")
    with pytest.raises(ValueError, match="no single token for the score 'nonexistentword'"):
        option_token_ids(team.tokenizer, ["nonexistentword"])


def test_an_option_the_judge_finds_very_unlikely_does_not_underflow():
    # every option below exp(-100): exp() underflows, the softmax over the options does not
    expected, mass = expected_score(torch.tensor([[-120.0, -121.0, -119.0]]), torch.tensor([1.0, 2.0, 3.0]))
    p = torch.tensor([-120.0, -121.0, -119.0]).softmax(-1)
    assert expected.item() == pytest.approx(float((p * torch.tensor([1.0, 2.0, 3.0])).sum()))
    assert 1.0 <= expected.item() <= 3.0 and mass.item() >= 0.0


def test_repeated_text_is_penalised_by_its_share_of_repeated_trigrams(team):
    """The score less ``redundancy_penalty`` times the share of repeated trigrams, clipped at 0;
    text that never repeats itself is scored as without the penalty."""
    plain, strict = base_judge(team, redundancy_penalty=0.0), base_judge(team, redundancy_penalty=1.0)
    twice = GOOD + " " + GOOD  # 13 words twice: 24 trigrams, the last 11 repeat earlier ones
    requests = [JudgeRequest(TASK, RUBRIC, GOOD), JudgeRequest(TASK, RUBRIC, twice)]
    raw, penalised = plain.score(requests), strict.score(requests)
    assert penalised[0] == pytest.approx(raw[0])
    assert penalised[1] == pytest.approx(max(0.0, raw[1] - 11 / 24))
    metrics = strict.pop_metrics()
    assert metrics["judge_repeated.sum"] == pytest.approx(11 / 24) and metrics["judge_repeated.n"] == 2
    with pytest.raises(Exception, match="redundancy_penalty"):
        JudgeConfig(redundancy_penalty=-1.0)

import pytest
import torch

from llmslim.core.errors import BadOptionError
from llmslim.shorten.reward import Embedder, RewardConfig, ShortenReward, resolve_sim_model, shorten_reward


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def test_formula_on_known_values():
    cfg = RewardConfig(lam=0.4, clip=10.0)
    r = shorten_reward(torch.tensor([1.0, 1.0, 0.5, 1.0]), torch.tensor([100, 100, 100, 100]),
                       torch.tensor([100, 50, 100, 150]), cfg)
    assert r.tolist() == pytest.approx([0.6, 0.6 + 0.4 / 2, 0.3, 0.6 - 0.4 / 2])


def test_clip_bounds_the_length_term():
    cfg = RewardConfig(lam=0.5, clip=1.0)
    r = shorten_reward(torch.tensor([1.0, 1.0]), torch.tensor([10, 10]), torch.tensor([60, 0]), cfg)
    # raw: 0.5 + 0.5*(-5) = -2 -> clipped to -1; 0.5 + 0.5 = 1 stays
    assert r.tolist() == pytest.approx([-1.0, 1.0])


def test_equal_texts_cos_one_and_half_length_bonus(embedder):
    text = "The capital of France is Paris, a city on the Seine known for its museums."
    other = "Photosynthesis converts light energy into chemical energy in plants."
    cos = embedder.cosine([text, text], [text, other])
    assert cos[0].item() == pytest.approx(1.0, abs=1e-5)
    assert cos[1].item() < 0.5
    lam = 0.3
    reward = ShortenReward(embedder, RewardConfig(lam=lam, clip=1.0))
    out = reward(prompts=["q", "q"], completions=[text, text], completion_ids=[[1] * 20, [1] * 10],
                 ref_text=[text, text], ref_tokens=[20, 20])
    assert out[0] == pytest.approx(1 - lam, abs=1e-5)  # same text, same length
    assert out[1] == pytest.approx(1 - lam + lam / 2, abs=1e-5)  # half the length: +λ/2
    assert reward.stats.last["reward_clipped_frac"] == 0.0


def test_conversational_completions(embedder):
    reward = ShortenReward(embedder, RewardConfig(lam=0.0))
    out = reward(completions=[[{"role": "assistant", "content": "hello there"}]], completion_ids=[[1, 2]],
                 ref_text=["hello there"], ref_tokens=[2])
    assert out[0] == pytest.approx(1.0, abs=1e-5)


def test_bad_settings():
    with pytest.raises(BadOptionError):
        RewardConfig(lam=1.5)
    with pytest.raises(BadOptionError):
        RewardConfig(clip=0)
    from llmslim.core.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        resolve_sim_model("no-such-model-folder")

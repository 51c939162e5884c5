"""GRPO: the objective's pieces, configs, offline groups, bitwise resume, and real learning."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainsvc_lm import ConfigError
from trainsvc_lm._grpo import (
    GRPOTrainer,
    OfflineSample,
    group_advantages,
    groups_from_art,
    grpo_loss,
)
from trainsvc_lm._grpo_config import GRPOConfig
from trainsvc_lm._tasks import TASKS, DigitVocab, get_task, position_reward

pytestmark = pytest.mark.slow(65)

TINY = {
    "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    "grpo": {"group_size": 4, "prompts_per_step": 4},
    "data": {"eval_prompts": 16},
}


def _config(tmp_path: Path, **sections: dict[str, Any]) -> GRPOConfig:
    data: dict[str, dict[str, Any]] = {k: dict(v) for k, v in TINY.items()}
    data["log"] = {"checkpoint_dir": str(tmp_path / "ck"), "save_interval": 0}
    for name, table in sections.items():
        data.setdefault(name, {}).update(table)
    return GRPOConfig.from_dict(data)


# ---------------------------------------------------------------- tasks


def test_tasks_answers_and_rewards() -> None:
    sort, inc = get_task("sort4"), get_task("increment4")
    assert sort.answer_of("3141") == "1134"
    assert inc.answer_of("3149") == "4250"
    assert sort.reward("3141>", "1134") == 1.0
    assert sort.reward("3141>", "1139") == 0.75
    assert position_reward("11", "1134") == 0.5  # missing positions count as wrong
    assert position_reward("113400", "1134") == 4 / 6  # and so do extra ones
    train = {p for p in sort.train_prompts(np.random.default_rng(0), 2000)}
    held = set(sort.eval_prompts(1000))
    assert not train & held
    with pytest.raises(ConfigError, match=r"data.task"):
        get_task("nope")


def test_digit_vocab_round_trip() -> None:
    v = DigitVocab()
    ids = v.encode("0123>")
    assert ids[0] == v.bos_id and v.decode(ids) == "0123>"
    with pytest.raises(ConfigError, match="prompt"):
        v.encode("12a")


# ---------------------------------------------------------------- the objective


def test_group_advantages_normalise_and_drop_flat_groups() -> None:
    rewards = np.array([[1.0, 0.0, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3], [1.0, 0.0, 9.0, 9.0]])
    valid = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], bool)
    adv, kept = group_advantages(rewards, valid, eps=0.0)
    assert kept.tolist() == [True, False, True]
    r = rewards[0]
    np.testing.assert_allclose(adv[0], (r - r.mean()) / r.std(), rtol=1e-6)
    assert np.all(adv[1] == 0)
    np.testing.assert_allclose(adv[2], [1.0, -1.0, 0.0, 0.0], rtol=1e-6)  # padding ignored


def _loss(**kw: Any) -> tuple[float, dict[str, float]]:
    args: dict[str, Any] = {
        "epsilon": 0.2,
        "epsilon_high": 0.2,
        "beta": 0.0,
        "loss_norm": "token",
        "ref_logp": None,
    }
    args.update(kw)
    loss, metrics = grpo_loss(**args)
    return float(loss), {k: float(v) for k, v in metrics.items()}


def test_loss_on_policy_is_minus_mean_advantage_and_normalisations_differ() -> None:
    logp = jnp.log(jnp.full((2, 3), 0.5))
    mask = jnp.array([[1, 1, 1], [1, 0, 0]], jnp.float32)
    adv = jnp.array([1.0, -2.0])
    token, m = _loss(logp=logp, behaviour_logp=logp, advantages=adv, mask=mask)
    seq, _ = _loss(logp=logp, behaviour_logp=logp, advantages=adv, mask=mask, loss_norm="sequence")
    assert token == pytest.approx(-(3 * 1.0 - 2.0) / 4)  # DAPO: every token counts once
    assert seq == pytest.approx(-(1.0 - 2.0) / 2)  # GRPO: every sequence counts once
    assert m["clip_fraction"] == 0 and m["kl"] == 0 and m["ratio_mean"] == pytest.approx(1)


def test_loss_clips_ratio_and_stops_its_gradient() -> None:
    behaviour = jnp.log(jnp.array([[0.2, 0.2]]))
    mask = jnp.ones((1, 2))
    adv = jnp.array([1.0])

    def f(lp: jax.Array) -> jax.Array:
        return grpo_loss(
            lp,
            behaviour,
            None,
            adv,
            mask,
            epsilon=0.2,
            epsilon_high=0.28,
            beta=0.0,
            loss_norm="token",
        )[0]

    inside = jnp.log(jnp.array([[0.24, 0.24]]))  # ratio 1.2 < 1.28: not clipped
    outside = jnp.log(jnp.array([[0.3, 0.3]]))  # ratio 1.5 > 1.28: clipped, no gradient
    assert float(jnp.abs(jax.grad(f)(inside)).sum()) > 0
    assert float(jnp.abs(jax.grad(f)(outside)).sum()) == 0
    value, m = _loss(
        logp=outside, behaviour_logp=behaviour, advantages=adv, mask=mask, epsilon_high=0.28
    )
    assert value == pytest.approx(-1.28) and m["clip_fraction"] == 1.0


def test_k3_kl_is_zero_at_the_reference_and_positive_elsewhere() -> None:
    ref = jnp.log(jnp.array([[0.5, 0.1]]))
    mask = jnp.ones((1, 2))
    kw = {"behaviour_logp": ref, "advantages": jnp.zeros(1), "mask": mask, "beta": 0.5}
    same, m0 = _loss(logp=ref, ref_logp=ref, **kw)
    other = jnp.log(jnp.array([[0.25, 0.3]]))
    loss, m1 = _loss(logp=other, ref_logp=ref, **kw)
    assert m0["kl"] == pytest.approx(0, abs=1e-7) and same == pytest.approx(0, abs=1e-7)
    r = np.array([0.5 / 0.25, 0.1 / 0.3])
    assert m1["kl"] == pytest.approx(float(np.mean(r - np.log(r) - 1)), rel=1e-5)
    assert loss == pytest.approx(0.5 * m1["kl"], rel=1e-5)


# ---------------------------------------------------------------- config


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"grpo.group_size"):
        GRPOConfig.from_dict({"grpo": {"group_size": 1}})
    with pytest.raises(ConfigError, match=r"data.task"):
        GRPOConfig.from_dict({"data": {"task": "sort4", "offline_file": "x.jsonl"}})
    with pytest.raises(ConfigError, match=r"data.task"):
        GRPOConfig.from_dict({"data": {"task": "unknown"}})
    with pytest.raises(ConfigError, match=r"train.mode"):
        GRPOConfig.from_dict({"train": {"mode": "lora"}})
    cfg = GRPOConfig().replace({"grpo.beta": 0.04, "grpo.epsilon_high": 0.28})
    assert GRPOConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"data.reward"):
        GRPOTrainer(_config(tmp_path, data={"reward": "judge"}))


# ---------------------------------------------------------------- trainer


def _arrays(trainer: GRPOTrainer) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves((trainer.trainable, trainer.opt_state))]


def test_resume_is_bitwise(tmp_path: Path) -> None:
    cfg = _config(tmp_path, train={"steps": 4}, grpo={"updates_per_batch": 2, "beta": 0.1})
    straight = GRPOTrainer(cfg.replace({"log.checkpoint_dir": str(tmp_path / "a")}))
    straight.run(4)
    first = GRPOTrainer(cfg)
    first.run(2)
    path = first.save_checkpoint()
    first.close()
    resumed = GRPOTrainer(cfg)
    assert resumed.restore(path) == path and resumed.step_count == 2
    resumed.run(2)
    assert resumed.step_count == 4
    for a, b in zip(_arrays(straight), _arrays(resumed), strict=True):
        assert a.tobytes() == b.tobytes()
    assert resumed.last_metrics["reward_mean"] == straight.last_metrics["reward_mean"]
    other = GRPOTrainer(cfg.replace({"grpo.beta": 0.2}))
    with pytest.raises(ConfigError, match=r"grpo.beta"):
        other.restore(path)


def test_frames_carry_reward_kl_clip_and_a_sample(tmp_path: Path) -> None:
    frames: list[Any] = []
    cfg = _config(tmp_path, train={"steps": 2}, log={"sample_interval": 1, "eval_interval": 2})
    GRPOTrainer(cfg, frames.append).run()
    assert [f.step for f in frames] == [1, 2]
    for key in ("reward_mean", "reward_std", "kl", "clip_fraction", "train_loss"):
        assert key in frames[-1].metrics
    assert "eval_reward" in frames[-1].metrics and "eval_reward" not in frames[0].metrics
    assert frames[-1].sample_prompt in get_task("sort4").eval_prompts(1)
    assert isinstance(frames[-1].sample_completion, str)


def _art_group(prompt: str, completions: list[str], rewards: list[float]) -> dict[str, Any]:
    return {
        "trajectories": [
            {
                "messages_and_choices": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": c},
                ],
                "reward": r,
            }
            for c, r in zip(completions, rewards, strict=True)
        ]
    }


def test_offline_groups_train_towards_the_better_completions(tmp_path: Path) -> None:
    task = TASKS["increment4"]
    rng = np.random.default_rng(1)
    groups = []
    for prompt in task.train_prompts(rng, 8):
        right = task.answer_of(task.digits_of(prompt))
        wrong = "".join(rng.choice(list("0123456789"), size=4))
        groups.append(_art_group(prompt, [right, wrong, wrong[::-1]], [1.0, 0.0, 0.2]))
    offline = groups_from_art(groups)
    first = groups[0]["trajectories"][0]["messages_and_choices"][0]
    assert offline[0][0] == OfflineSample(
        first["content"], offline[0][0].completion, 1.0, None, (first,)
    )
    cfg = _config(
        tmp_path,
        data={"task": None, "offline_file": "recorded.jsonl"},
        grpo={"prompts_per_step": 4},
        train={"steps": 30},
        log={"eval_interval": 0, "sample_interval": 0},
    )
    with pytest.raises(ConfigError, match=r"data.offline_file"):
        GRPOTrainer(cfg)
    trainer = GRPOTrainer(cfg, offline_groups=offline)
    # Behaviour log-probs were recomputed under the initial policy: the first update
    # sees ratio 1 (nothing clipped).
    trainer.step()
    assert trainer.last_metrics["clip_fraction"] == 0.0
    assert trainer.last_metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    vocab = DigitVocab()

    def logp(completion: str, prompt: str) -> float:
        tokens, positions, mask = trainer._pack(
            [vocab.encode(prompt)], [vocab.encode_completion(completion)]
        )
        out = np.asarray(trainer._logps(trainer.trainable, trainer.frozen, tokens, positions))
        return float((out * mask).sum())

    p0 = offline[0][0].prompt
    before = logp(offline[0][0].completion, p0) - logp(offline[0][1].completion, p0)
    trainer.run()
    after = logp(offline[0][0].completion, p0) - logp(offline[0][1].completion, p0)
    assert after > before + 1.0
    with pytest.raises(Exception, match="assistant"):
        groups_from_art([{"trajectories": [{"messages_and_choices": [], "reward": 1.0}]}])
    with pytest.raises(Exception, match="reward"):
        groups_from_art([_art_group("1>", ["2"], [math.nan])])


def test_a_saved_policy_is_a_model_directory_the_next_run_starts_from(tmp_path: Path) -> None:
    """save_pretrained writes a digit policy as HF layout + tokenizer files: the loaded
    directory encodes like DigitVocab, answers exactly as the trainer did, and an
    offline run with it as model.dir starts from that policy (ratio 1 at its first step)."""
    from trainsvc_lm import SamplingConfig, Tokenizer, load_model, sample

    trainer = GRPOTrainer(_config(tmp_path, data={"task": "increment4"}, train={"steps": 3}))
    trainer.run()
    out = trainer.save_pretrained(tmp_path / "policy")
    tokenizer = Tokenizer.from_dir(out)
    vocab = DigitVocab()
    prompts = TASKS["increment4"].eval_prompts(8)
    for p in prompts:
        assert tokenizer.encode(p, add_special_tokens=True) == vocab.encode(p)
    assert tokenizer.decode([3, 1, DigitVocab.eos_id, 4]) == "314"
    config, params = load_model(out)
    assert config == trainer.model_config
    greedy = SamplingConfig(max_new_tokens=4, temperature=0.0, stop_token_ids=())
    rows = [vocab.encode(p) for p in prompts]
    loaded = [vocab.decode(r.tokens) for r in sample(params, config, rows, greedy)]
    own = [vocab.decode(r.tokens) for r in trainer._sample_policy(rows, 0, greedy=True)]
    assert loaded == own
    offline = groups_from_art([_art_group(prompts[0], ["1234", own[0], "0000"], [0.0, 1.0, 0.5])])
    follow = GRPOTrainer(
        _config(
            tmp_path / "next",
            model={"dir": str(out)},
            data={"task": None, "offline_file": "w.jsonl"},
            grpo={"prompts_per_step": 1, "max_new_tokens": 4},
        ),
        offline_groups=offline,
    )
    assert [np.asarray(x).tolist() for x in jax.tree.leaves(follow.trainable)] == [
        np.asarray(x).tolist() for x in jax.tree.leaves(trainer.trainable)
    ]
    follow.step()
    assert follow.last_metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)


def test_recorded_chat_prompts_go_through_the_models_chat_template(
    tmp_path: Path, tiny_model: Any
) -> None:
    """A recorded prompt with a system message is tokenized as the chat template renders
    it (with the generation prompt), not as the messages' plain text."""
    from trainsvc_lm import Tokenizer

    model_dir = tiny_model("llama")
    chat = [
        {"role": "system", "content": "You trade."},
        {"role": "user", "content": "price 12?"},
        {"role": "assistant", "content": "buy"},
    ]
    group = {
        "trajectories": [
            {"messages_and_choices": [*chat[:2], {"role": "assistant", "content": c}], "reward": r}
            for c, r in (("buy", 1.0), ("sell", 0.0))
        ]
    }
    offline = groups_from_art([group])
    assert offline[0][0].messages == tuple(chat[:2])
    cfg = _config(
        tmp_path,
        model={"dir": str(model_dir)},
        data={"task": None, "offline_file": "w.jsonl"},
        grpo={"prompts_per_step": 1, "max_new_tokens": 4},
        train={"mode": "lora", "steps": 1},
    )
    trainer = GRPOTrainer(cfg, offline_groups=offline)
    tokenizer = Tokenizer.from_dir(model_dir)
    rendered = tokenizer.render_chat(chat[:2], add_generation_prompt=True)
    assert "You trade." in rendered and rendered != offline[0][0].prompt
    ids = trainer._offline_prompt_tokens(offline[0][0])
    assert ids == tokenizer.encode(rendered)
    assert ids != tokenizer.encode(offline[0][0].prompt, add_special_tokens=True)
    # A completion that ended by itself is trained with the EOS that ended it (so the
    # policy learns when to stop); one cut at a length limit is not.
    eos = tokenizer.eos_token_ids[0]
    buy = trainer._offline_completion_tokens(offline[0][0])
    assert buy == [*tokenizer.encode("buy"), eos]
    cut = groups_from_art(
        [
            {
                "trajectories": [
                    {
                        "messages_and_choices": [
                            chat[1],
                            {"finish_reason": "length", "index": 0, "message": chat[2]},
                        ],
                        "reward": 0.0,
                    }
                ]
            }
        ]
    )[0][0]
    assert not cut.stopped and trainer._offline_completion_tokens(cut) == tokenizer.encode("buy")
    trainer.step()
    assert trainer.last_metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------- learning from chance

LEARN = {"log": {"eval_interval": 0, "sample_interval": 0, "frame_interval": 0}}
EVAL_EVERY = 10
"""Steps between held-out evaluations while learning from chance (each costs a few ms)."""


def _assert_learns_from_chance(trainer: GRPOTrainer, target: float) -> None:
    """Asserts that the held-out reward, under 0.2 at the start, reaches `target` at one of the
    evaluations every `EVAL_EVERY` steps within the configured steps (training stops there:
    the steps are a cap sized for slower seeds and machines, not the time it takes here)."""
    start = trainer.evaluate()
    assert start is not None and start < 0.2, start
    rewards = []
    for step in range(1, trainer.config.train.steps + 1):
        trainer.step()
        if step % EVAL_EVERY == 0 or step == trainer.config.train.steps:
            rewards.append(trainer.evaluate() or 0.0)
            if rewards[-1] >= target:
                return
    raise AssertionError(f"held-out reward stayed under {target}: {rewards}")


def test_increment_learns_from_chance(tmp_path: Path) -> None:
    """RL from a random init (no supervised warm-up): held-out reward ~0.05 -> >= 0.99."""
    cfg = GRPOConfig.from_dict(
        {
            "data": {"task": "increment4", "eval_prompts": 256},
            "train": {"steps": 130, "seed": 0},
            "log": {"checkpoint_dir": str(tmp_path), "save_interval": 0, **LEARN["log"]},
        }
    )
    _assert_learns_from_chance(GRPOTrainer(cfg), target=0.99)


def test_sort_learns_from_chance(tmp_path: Path) -> None:
    """RL from a random init (no supervised warm-up): held-out reward ~0.1 -> >= 0.9.

    Sorting needs more care than incrementing: more prompts per step (64 groups of 8),
    two updates per batch with a wider upper clip (DAPO's clip-higher) at a lower
    learning rate keep the policy from collapsing onto wrong answers before it has
    found the right ones.
    """
    cfg = GRPOConfig.from_dict(
        {
            "data": {"task": "sort4", "eval_prompts": 256},
            "grpo": {
                "group_size": 8,
                "prompts_per_step": 64,
                "updates_per_batch": 2,
                "epsilon_high": 0.28,
            },
            "optim": {"lr": 1e-3},
            "train": {"steps": 140, "seed": 0},
            "log": {"checkpoint_dir": str(tmp_path), "save_interval": 0, **LEARN["log"]},
        }
    )
    _assert_learns_from_chance(GRPOTrainer(cfg), target=0.9)

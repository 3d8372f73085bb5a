"""Learning that really learns: CartPole-v1 reaches a greedy eval mean >= 475 on the CPU."""

from __future__ import annotations

import pytest

from fastdqn import train

BUDGET_STEPS = 150_000
CARTPOLE = dict(
    env_id="CartPole-v1", num_envs=8, vector="sync", seed=1, device="cpu",
    total_timesteps=BUDGET_STEPS, progress=False, hidden=(128, 128), lr=1e-3, batch_size=64,
    buffer_size=50_000, learning_starts=1000, train_every=4, gradient_steps=1, tau=1.0,
    target_update_interval=250, eps_decay_steps=10_000, eps_end=0.02, eval_every=2500,
    eval_episodes=10, solve_episodes=100,
)
"""A DQN setting that solves CartPole-v1 well inside the budget on 2 cores."""


@pytest.mark.slow
def test_cartpole_reaches_475(tmp_path) -> None:
    result = train(**CARTPOLE, run_dir=str(tmp_path / "cartpole"))
    s = result.summary
    assert s["solved"], f"not solved in {BUDGET_STEPS} steps; evals: {s['evals']}"
    assert s["final_eval"]["episodes"] == 100
    assert s["final_eval"]["mean"] >= 475
    assert s["steps_to_solve"] <= BUDGET_STEPS
    # The returned policy is the trained one: it balances the pole on a fresh seed too.
    from fastdqn import run_episodes

    check = run_episodes(result.policy, "CartPole-v1", 5, seed=12345)
    assert check.mean >= 400


@pytest.mark.slow
def test_rainbow_lite_preset_learns_cartpole(tmp_path) -> None:
    """The preset's options (double, dueling, 3-step, prioritized) on the same CartPole setting."""
    from fastdqn.config.files import load_toml

    preset = load_toml("rainbow-lite")
    assert preset["dueling"] and preset["prioritized"] and preset["n_step"] == 3
    result = train(**CARTPOLE, **preset, run_dir=str(tmp_path / "rainbow"))
    s = result.summary
    assert s["solved"], f"not solved in {BUDGET_STEPS} steps; evals: {s['evals']}"
    assert s["final_eval"]["mean"] >= 475
    assert s["learner_route"].startswith("cpu-fused")

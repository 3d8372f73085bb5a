"""DQN's training loop: act on every env at once, store the transitions, learn in blocks of K
steps, hand the run its counts; `runtime.run.Run` does the rest (evaluations, checkpoints,
logging, signals). Reads top to bottom as one step of the envs."""

from __future__ import annotations

from fastdqn.algos.contract import RunHandle
from fastdqn.algos.dqn.agent import DQN
from fastdqn.envs.autoreset import real_next_obs

STAGES = ("h2d", "learn", "act", "env_send", "sample", "target", "env_wait", "add", "join",
          "log")


def train_dqn(run: RunHandle, agent: DQN) -> None:
    """The loop: act, step the envs while learning, add; then the run's maybe-hooks.

    Where the route overlaps (route.py), the learner's block starts first and runs beside the
    loop, acting on the parameters it started from; elsewhere it runs in line while the envs
    step. Either way the actions come before the block's updates, and the run is the same."""
    c, envs, lap = run.c, run.envs, run.timer.lap
    obs = agent.observe(run.reset_envs())
    try:
        while run.running():
            beside = agent.learn_beside(c, lap)
            eps = agent.epsilon(c)
            actions = agent.act(obs, eps, c.step)
            lap("act")
            envs.step_async(actions.cpu().numpy())
            lap("env_send")
            if not beside:
                agent.learn(c, lap)
            next_obs, rewards, terminated, truncated, infos = envs.step_wait()
            lap("env_wait")
            agent.add(obs, actions, rewards, real_next_obs(next_obs, infos, agent.real_next),
                      terminated, truncated, infos)
            lap("add")
            obs = agent.observe(next_obs)
            lap("h2d")
            run.count_step(rewards, terminated, truncated)
            agent.settle()
            lap("join")
            run.maybe_log(epsilon=eps)
            if run.maybe_evaluate():
                break
            run.maybe_checkpoint()
    finally:
        agent.settle(stop=True)  # no block writing the learner, no thread, once the loop ends

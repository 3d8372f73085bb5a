"""A population's learner step (--seeds): every live agent's due learner steps, the uniform
blocks of the agents on the native route in one native call (`native.steps_many`), the rest
(prioritized replay, Numba, the reference learner, a device) through each agent's own
`learn`. Either way each agent's steps are its solo run's: its own sampler draws its rows from
its own replay partition, and its loss, gradient norm, priorities and beta are its own."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from fastdqn.algos.contract import Counters
from fastdqn.algos.dqn.agent import DQN
from fastdqn.errors import TrainingDiverged
from fastdqn.learners import native
from fastdqn.replay.prioritized import beta_at


def learn_all(agents: list[tuple[DQN, Counters]], lap: Callable[[str], None],
              failed: Callable[[int, BaseException], None]) -> None:
    """The learner steps due for each (agent, counters) after one vector step; `failed(i, e)`
    takes agent i's divergence (the others go on)."""
    steps: list[native.NativeStep] = []
    blocks: list[np.ndarray] = []
    for i, (agent, c) in enumerate(agents):
        try:
            k = agent.due_steps(c)
            if not k:
                continue
            step = agent.native_block_step()
            if step is None:
                beta = beta_at(c.step, agent.cfg.total_timesteps, agent.cfg.per_beta)
                agent.learner.learn(agent.buffer, agent.sampler, k, agent.cfg.batch_size, beta,
                                    lap)
                continue
            steps.append(step)
            blocks.append(agent.sampler.sample(agent.buffer.size, k, agent.cfg.batch_size))
        except TrainingDiverged as e:
            failed(i, e)
    lap("sample")
    native.steps_many(steps, blocks, learner_threads(len(steps)))
    lap("learn")


def learner_threads(agents: int) -> int:
    """Threads for the agents' native steps: one per core this process may run on (at most
    one per agent). A solo run's learner takes one core while the env workers step on the
    others; a population's learner work is N times as large, and on a 2-core machine one
    thread left the second core idle most of each step (the envs' share of it is small)."""
    return max(1, min(agents, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))

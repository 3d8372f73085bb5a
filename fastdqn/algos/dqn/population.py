"""A population's learner step (--seeds): every live agent's due learner steps, the uniform
blocks of the agents on the native route in one native call (`native.steps_many`), the rest
(prioritized replay, Numba, the reference learner, a device) through each agent's own
`learn`. Either way each agent's steps are its solo run's: its own sampler draws its rows from
its own replay partition, and its loss, gradient norm, priorities and beta are its own."""

from __future__ import annotations

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
    native.steps_many(steps, blocks)
    lap("learn")

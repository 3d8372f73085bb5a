"""A population's learner step (--seeds): every live agent's due learner steps. The uniform
blocks of the agents on the native route run in one native call (`native.steps_many`); the
uniform steps of reference-route agents share one vmapped gradient a step
(`learners.stacked`); the rest (prioritized replay, Numba, noisy or QR heads, a device) go
through each agent's own `learn`. Either way each agent's steps are its solo run's: its own
sampler draws its rows from its own replay partition, and its loss, gradient norm, optimizer
step, priorities and beta are its own."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fastdqn.algos.contract import Counters
from fastdqn.algos.dqn.agent import DQN
from fastdqn.envs.workers import usable_cores
from fastdqn.errors import TrainingDiverged
from fastdqn.learners import native
from fastdqn.learners.reference import ReferenceLearner, uniform_batch
from fastdqn.learners.stacked import StackedGradients, signature, stackable, stacked_steps
from fastdqn.replay.rows import Batch
from fastdqn.replay.uniform import UniformSampler


def learn_all(agents: list[tuple[DQN, Counters]], lap: Callable[[str], None],
              failed: Callable[[int, BaseException], None],
              stacks: dict[tuple, StackedGradients] | None = None) -> None:
    """The learner steps due for each (agent, counters) after one vector step; `failed(i, e)`
    takes agent i's divergence (the others go on). Native-route agents' blocks run in one
    native call; reference-route agents that can (`stacked.stackable`) share one vmapped
    gradient a step (`stacks` keeps its compiled functions); the rest step alone."""
    steps: list[native.NativeStep] = []
    blocks: list[np.ndarray] = []
    stacked: list[tuple[DQN, Counters, int]] = []
    for i, (agent, c) in enumerate(agents):
        try:
            k = agent.due_steps(c)
            if not k:
                continue
            step = agent.native_block_step()
            if step is not None:
                steps.append(step)
                blocks.append(agent.sampler.sample(agent.buffer.size, k, agent.cfg.batch_size))
            elif stacks is not None and _stacks(agent):
                stacked.append((agent, c, k))
            else:
                agent.learn_steps(k, c, lap)
        except TrainingDiverged as e:
            failed(i, e)
    lap("sample")
    native.steps_many(steps, blocks, learner_threads(len(steps)))
    if len(stacked) > 1:
        _stacked([(agent, k) for agent, _, k in stacked], stacks)
    elif stacked:  # a vmap of one costs more than the step itself
        agent, c, k = stacked[0]
        agent.learn_steps(k, c, lap)
    lap("learn")


def _stacks(agent: DQN) -> bool:
    return (isinstance(agent.learner, ReferenceLearner) and isinstance(agent.sampler, UniformSampler)
            and stackable(agent.learner) is None)


def _stacked(group: list[tuple[DQN, int]], stacks: dict) -> None:
    """The reference-route agents' steps, one batched gradient per signature a step."""
    by_kind: dict[tuple, list[tuple[DQN, int]]] = {}
    for agent, k in group:
        by_kind.setdefault(signature(agent.learner), []).append((agent, k))
    for members in by_kind.values():
        def draw(i: int, j: int, members=members) -> Batch:
            agent = members[i][0]
            return uniform_batch(agent.buffer, agent.sampler, agent.cfg.batch_size)

        stacked_steps([a.learner for a, _ in members], draw, [k for _, k in members], stacks)


def learner_threads(agents: int) -> int:
    """Threads for the agents' native steps: one per core this process may run on (at most
    one per agent). A solo run's learner takes one core while the env workers step on the
    others; a population's learner work is N times as large, and on a 2-core machine one
    thread left the second core idle most of each step (the envs' share of it is small)."""
    return max(1, min(agents, usable_cores()))

"""The algorithms --algo chooses from, one entry each: what `runtime.train` builds, trains,
checks and sizes for a name, so that it never switches on one. Their keys are the config's algo
choices (the config sits below this layer, so it cannot read them here; a test keeps the two
equal).
"""

from __future__ import annotations

from collections.abc import Callable

from fastdqn.algos import pqn, reinforce
from fastdqn.algos.contract import Agent, Algorithm
from fastdqn.algos.dqn import checkpoint as dqn_checkpoint
from fastdqn.algos.dqn import loop as dqn_loop
from fastdqn.algos.dqn import preflight as dqn_preflight
from fastdqn.algos.dqn.agent import DQN


def _without_extras(agent_class: Callable[..., Agent]) -> Callable[..., Agent]:
    """`agent_class(cfg, obs_space, act_space, device)` as a make_agent: the keywords `train`
    passes (q_network, env_factory, resuming) are what DQN reads; this agent reads none."""
    def make(cfg, obs_space, act_space, device, **extras) -> Agent:
        return agent_class(cfg, obs_space, act_space, device)
    return make


ALGOS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("dqn", make_agent=DQN, loop=dqn_loop.train_dqn, stages=dqn_loop.STAGES,
              check_checkpoint=dqn_checkpoint.check_checkpoint,
              check_memory=dqn_preflight.check_memory, check_env=dqn_preflight.check_dqn_env,
              custom_network=True, prepare=dqn_preflight.prepare),
    Algorithm("pqn", make_agent=_without_extras(pqn.PQN), loop=pqn.train_pqn, stages=pqn.STAGES,
              check_checkpoint=pqn.PQN.check_checkpoint, check_memory=pqn.check_memory),
    Algorithm("reinforce", make_agent=_without_extras(reinforce.Reinforce),
              loop=reinforce.train_reinforce, stages=reinforce.STAGES,
              check_checkpoint=reinforce.Reinforce.check_checkpoint,
              check_memory=reinforce.check_memory, hidden_field="policy_hidden"),
)}

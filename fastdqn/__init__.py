"""fastdqn: Deep Q-Networks on vectorized gymnasium envs, fast and correct.

    from fastdqn import Config, train
    result = train(Config(env_id="CartPole-v1", total_timesteps=50_000))
    result.policy(obs_batch)          # greedy actions
"""

from fastdqn.config.settings import Config, make_config
from fastdqn.errors import ConfigError, EnvError, TrainingDiverged
from fastdqn.evaluation.episodes import (
    Comparison,
    HeuristicPolicy,
    Policy,
    RandomPolicy,
    compare_policies,
    load_policy,
    render_episodes,
    run_episodes,
    save_gif,
)
from fastdqn.runtime.run import TrainResult
from fastdqn.runtime.train import train
from fastdqn.version import __version__

__all__ = ["Comparison", "Config", "ConfigError", "EnvError", "HeuristicPolicy", "Policy",
           "RandomPolicy", "TrainResult", "TrainingDiverged", "compare_policies", "load_policy",
           "make_config", "render_episodes", "run_episodes", "save_gif", "train", "__version__"]

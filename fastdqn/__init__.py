"""fastdqn: Deep Q-Networks on vectorized gymnasium envs, fast and correct.

    from fastdqn import Config, train
    result = train(Config(env_id="CartPole-v1", total_timesteps=50_000))
    result.policy(obs_batch)          # greedy actions
"""

from fastdqn.config.files import make_config
from fastdqn.config.settings import Config
from fastdqn.errors import ConfigError, EnvError, TrainingDiverged
from fastdqn.evaluation.compare import Comparison, compare_policies
from fastdqn.evaluation.episodes import run_episodes
from fastdqn.evaluation.media import render_episodes, save_gif
from fastdqn.evaluation.policies import HeuristicPolicy, Policy, RandomPolicy, load_policy
from fastdqn.runtime.population import PopulationResult, train_population
from fastdqn.runtime.run import TrainResult
from fastdqn.runtime.train import train
from fastdqn.version import __version__

__all__ = ["Comparison", "Config", "ConfigError", "EnvError", "HeuristicPolicy", "Policy",
           "PopulationResult", "RandomPolicy", "TrainResult", "TrainingDiverged",
           "compare_policies", "load_policy",
           "make_config", "render_episodes", "run_episodes", "save_gif", "train",
           "train_population", "__version__"]

"""fastdqn: Deep Q-Networks on vectorized gymnasium envs, fast and correct.

    from fastdqn import Config, train
    result = train(Config(env_id="CartPole-v1", total_timesteps=50_000))
    result.policy(obs_batch)          # greedy actions
"""

__version__ = "0.1.0"

from .config import Config, ConfigError, make_config  # noqa: E402
from .envs import EnvError  # noqa: E402
from .evaluate import Policy, run_episodes  # noqa: E402
from .trainer import TrainingDiverged, TrainResult, train  # noqa: E402

__all__ = ["Config", "ConfigError", "EnvError", "Policy", "TrainResult", "TrainingDiverged",
           "make_config", "run_episodes", "train", "__version__"]

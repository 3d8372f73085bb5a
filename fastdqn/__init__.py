"""fastdqn: Deep Q-Networks on vectorized gymnasium envs, fast and correct.

    from fastdqn import Config, train
    result = train(Config(env_id="CartPole-v1", total_timesteps=50_000))
    result.policy(obs_batch)          # greedy actions
"""

__version__ = "0.1.0"

from .config import Config, ConfigError, make_config  # noqa: E402
from .envs import EnvError  # noqa: E402
from .evaluate import (  # noqa: E402
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
from .trainer import TrainingDiverged, TrainResult, train  # noqa: E402

__all__ = ["Comparison", "Config", "ConfigError", "EnvError", "HeuristicPolicy", "Policy",
           "RandomPolicy", "TrainResult", "TrainingDiverged", "compare_policies", "load_policy",
           "make_config", "render_episodes", "run_episodes", "save_gif", "train", "__version__"]

"""The named values of the text settings: the algorithms, the network kinds, and each choice flag's
options. Below the coercion (which checks a choice on its own) and the fields (whose tags name
algorithms and network kinds)."""

from __future__ import annotations

ALGOS = ("dqn", "pqn", "reinforce")
"""The algorithms --algo picks from; a field read by all of them carries no `algos` tag."""

NETWORK_KINDS = ("mlp", "cnn", "rbf", "custom", "mlp_module")
"""What trains as the Q-network: fastdqn's MLP, CNN or RBF network, or a `q_network` module of
your own ("custom", `train(..., q_network=net)`); "mlp_module" is the MLP with a distributional
or noisy head (--network mlp with --distributional or --noisy), which has no flat layout."""

CHOICES: dict[str, list[str]] = {
    "algo": list(ALGOS),
    "reinforce_baseline": ["none", "normalize", "value"],
    "vector": ["auto", "sharded", "async", "sync", "envpool"],
    "learner": ["auto", "numba", "reference"],
    "frame_replay": ["auto", "on", "off"],
    "loss": ["huber", "mse"],
    "distributional": ["none", "c51", "qr"],
    "exploration": ["egreedy", "boltzmann"],
    "eps_schedule": ["linear", "exponential", "per_episode"],
    "network": ["auto", "mlp", "cnn", "rbf"],
    "optimizer": ["adam", "rmsprop"],
    "clip_rewards": ["auto", "on", "off"],
    "life_loss_terminal": ["auto", "on", "off"],
}
"""The values each text setting takes (checked alone, before the settings are checked together)."""

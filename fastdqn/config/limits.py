"""The largest value of every sized setting, and of what a checkpoint or a config file may declare.

Each bound keeps a typo or a crafted file from allocating memory, starting threads or looping
far beyond any real run before a one-line error can say so; each says why it is where it is.
"""

from __future__ import annotations

MAX_BUFFER_SIZE = 2**30
"""Largest --buffer-size: a thousand times the 1M-transition replay of the Atari DQN papers.
The buffer is allocated whole at start, so a bigger value (a typo, or a resumed checkpoint's
crafted config) would only exhaust memory."""

MAX_SEED = 2**32 - 1
"""Largest --seed: numpy's legacy and torch's CPU seeds are 32-bit, and every stream derived from
a run seed below 2**32 stays in range: its episode seeds `(seed << 34) | ...` (seeds.py) stay
below 2**66, which gymnasium's SeedSequence takes, and its generators' SeedSequence children
hash it to the 64-bit seeds torch.manual_seed takes."""

MAX_EPISODE_SEED = ((MAX_SEED + 1) << 34) - 1
"""Largest episode seed a run can give (the last episode of the last stream of MAX_SEED): the
range of `fastdqn eval --seed`, which names an episode seed, not a run seed."""

MAX_EVAL_EPISODES = 10**7
"""Most episodes one evaluation plays: its returns, lengths and end flags are arrays allocated
whole at its start (10^7 episodes take 170 MB; 10^9 would take 17 GB and fail, after the run
dir exists), and 100 is the usual protocol. A resumed checkpoint's own settings stay far lower
(checkpoint.check_file_settings)."""

MAX_THREADS = 1024
"""Largest --num-threads: OpenMP allocates each thread's state as the pool starts (10^5 threads
fail with a MemoryError inside torch), and no machine has more cores for one learner (a
resumed checkpoint's own settings stay under this machine's cores: checkpoint.check_file_settings)."""

MAX_ENVS = 2**16
"""Largest --num-envs and --eval-envs: per-env arrays are allocated at start (10^9 envs fail
there, after the run dir exists); EnvPool's largest Atari runs use a few thousand."""

MAX_INT_SETTING = 2**53
"""Largest value of any whole-number setting: beyond any run (10^6 steps a second for 285
years), exact as a float, and far enough below int64's limit that a counter's sum with it
(a target-update interval's step count, a schedule's steps) never overflows."""

MAX_ACTORS = 256
"""Largest --actors: actor i's episode seeds start at i << 24 of the TRAIN stream."""

MAX_FEATURES = 2**20
"""Most random features an RBF network may have (the post uses 400): `--rbf-features` and a
checkpoint's spec are both held to it, before anything is allocated by them."""

MAX_SCALES = 64
"""Most kernel widths an RBF network may have (the scikit-learn examples use 4)."""

MAX_NETWORK_PARAMS = 2**28
"""Most parameters a network may have, set by --hidden or declared by a checkpoint (268M: 1 GiB
of float32 per copy, and the learner keeps five copies). DQN's MLPs have 10^4 to 10^7; a
network this big is a typo or a crafted or damaged file, and sizing memory by it would exhaust
the machine before any other check."""

MAX_HIDDEN_LAYERS = 64
"""Most hidden layers a network may have, set by --hidden or declared by a checkpoint (DQN uses
1 to 3): beyond it the layer list alone makes the forward pass a loop of thousands of tiny steps."""

MAX_CONFIG_BYTES = 1 << 20
"""Largest --config file read: settings take a few hundred bytes; a bigger file is not one."""

MAX_ATOMS = 4096
"""Most atoms per action of a distributional head, set by --atoms or declared by a checkpoint
(C51 uses 51, QR-DQN 200): C51's projection holds batch x atoms^2 values."""

MAX_POPULATION = 1024
"""Most agents one --seeds population may hold: each has its own replay, learner and run dir
(1024 x the defaults' 16 envs is a quarter of MAX_ENVS); beyond that, more processes."""

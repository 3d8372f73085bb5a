"""The learner's losses, one file each, chosen by the network's value head (nets/heads.py):
td.py (one Q per action: Huber or squared TD error), c51.py (categorical projection,
cross-entropy), qr.py (quantile Huber). Each is a function

    loss(online, target, batch, double, td_loss) -> Loss

of the online and target networks (any module with `forward` giving Q [B, A] and `dist` giving
the head's atoms [B, A, N]) and a replay batch: the per-row loss with its graph, the per-row
priority for prioritized replay (the loss itself for the distributional heads, as Rainbow
does; |TD error| for the scalar one), and Q(s, a) of the taken actions for the statistics.

The reference learner's update, its CUDA-graph capture and Ape-X actors' initial priorities all
call `LOSSES[head]`: a new head's loss is one file here plus one entry below.
"""

from __future__ import annotations

from fastdqn.learners.losses import c51, qr, td
from fastdqn.learners.losses.contract import LossFn

LOSSES: dict[str, LossFn] = {"none": td.loss, "c51": c51.loss, "qr": qr.loss}
"""Loss of each value head kind (nets.heads.HEADS has the same keys; a test keeps them so)."""

"""Numba kernels for the CPU learner step: everything between the matrix products.

On a CPU, each torch op costs about 2-3 us of dispatch before it does any work, and a DQN step
on a small MLP is about 50 such ops around six GEMMs. These kernels fuse the elementwise parts
(batch gather, TD target and loss gradient, ReLU backward with the bias gradient, clipping plus
Adam) into four calls, so a step is the GEMMs (done by torch, i.e. MKL/oneDNN) plus a handful of
calls. They work in place on numpy views of the learner's flat tensors, so no data is copied and
the checkpoint format is the same as the torch path's. All kernels are compiled once and cached.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# Reassociation lets LLVM vectorize the reductions (the gradient norm, the bias sums); no
# assumption about NaN or inf is made, so divergence is still visible in the results.
_FAST = {"reassoc", "nsz"}


@numba.njit(cache=True)
def gather_rows(idx: np.ndarray, obs: np.ndarray, next_obs: np.ndarray, divisor: np.float32,
                out: np.ndarray) -> None:
    """out[:B] = obs[idx] / divisor, out[B:] = next_obs[idx] / divisor, as float32 rows."""
    b = idx.shape[0]
    d = obs.shape[1]
    for i in range(b):
        r = idx[i]
        for j in range(d):
            out[i, j] = np.float32(obs[r, j]) / divisor
            out[b + i, j] = np.float32(next_obs[r, j]) / divisor


@numba.njit(cache=True)
def td_grad(q: np.ndarray, q_target: np.ndarray, idx: np.ndarray, actions: np.ndarray,
            rewards: np.ndarray, dones: np.ndarray, gamma: np.float32, huber: bool,
            double: bool, dq: np.ndarray, grad_bias: np.ndarray, stats: np.ndarray) -> None:
    """dLoss/dQ for a batch, the last layer's bias gradient, and running loss / Q sums.

    q holds the online Q-values of [s; s'] (2B rows) when `double`, else of s (B rows);
    q_target those of the target net on s'. y = r + gamma * (1 - done) * Q_target(s', a*),
    with a* = argmax of the online Q(s') (double DQN) or of Q_target(s') (first maximum wins,
    as torch.argmax). The loss is the mean over the batch of Huber(delta=1) or squared error.
    """
    b = idx.shape[0]
    n_actions = q_target.shape[1]
    one = np.float32(1.0)
    inv_b = one / np.float32(b)
    for j in range(n_actions):
        grad_bias[j] = 0.0
    loss = 0.0
    q_sum = 0.0
    for i in range(b):
        src = q[b + i] if double else q_target[i]
        best = 0
        for j in range(1, n_actions):
            if src[j] > src[best]:
                best = j
        r = idx[i]
        y = rewards[r] + gamma * (one - dones[r]) * q_target[i, best]
        a = actions[r]
        diff = q[i, a] - y
        for j in range(n_actions):
            dq[i, j] = 0.0
        if huber:
            g = min(max(diff, -one), one) * inv_b
            loss += 0.5 * diff * diff if abs(diff) < 1.0 else abs(diff) - 0.5
        else:
            g = np.float32(2.0) * diff * inv_b
            loss += diff * diff
        dq[i, a] = g
        grad_bias[a] += g
        q_sum += q[i, a]
    stats[0] += loss / b
    stats[1] += q_sum / b
    stats[2] += 1.0


@numba.njit(cache=True)
def relu_backward(d: np.ndarray, h: np.ndarray, grad_bias: np.ndarray) -> None:
    """d *= (h > 0) in place, and grad_bias = column sums of the result."""
    rows, cols = d.shape
    for j in range(cols):
        grad_bias[j] = 0.0
    for i in range(rows):
        for j in range(cols):
            v = d[i, j] if h[i, j] > 0 else np.float32(0.0)
            d[i, j] = v
            grad_bias[j] += v


@numba.njit(cache=True, fastmath=_FAST)
def clip_adam(params: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
              step: np.ndarray, lr: float, beta1: float, beta2: float, eps: float,
              max_norm: float, target: np.ndarray, tau: float) -> None:
    """Clip the gradient to norm <= max_norm (if > 0), then one Adam step, in one pass each;
    with tau > 0 the soft target update target <- target + tau (params - target) rides along.

    The update is torch's Adam (no weight decay): m <- lerp(m, g, 1-b1), v <- b2 v + (1-b2) g^2,
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). The hyperparameters come
    in as float64 and 1 - beta is formed before rounding to float32, as torch does (rounding
    beta2 = 0.999 first would make 1 - beta2 wrong by 5e-5 relative).
    """
    n = params.shape[0]
    one = np.float32(1.0)
    scale = one
    if max_norm > 0:
        total = np.float32(0.0)
        for i in range(n):
            total += grad[i] * grad[i]
        scale = min(one, np.float32(max_norm) / (np.float32(math.sqrt(total)) + np.float32(1e-6)))
    step[0] += 1
    t = np.float64(step[0])
    step_size = np.float32(lr / (1.0 - beta1 ** t))
    bc2_sqrt = np.float32(math.sqrt(1.0 - beta2 ** t))
    w1, w2 = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
    b2, eps32, tau32 = np.float32(beta2), np.float32(eps), np.float32(tau)
    soft = tau > 0
    for i in range(n):
        g = grad[i] * scale
        grad[i] = g
        m = exp_avg[i] + w1 * (g - exp_avg[i])
        v = b2 * exp_avg_sq[i] + w2 * g * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        p = params[i] - step_size * m / (np.float32(math.sqrt(v)) / bc2_sqrt + eps32)
        params[i] = p
        if soft:
            target[i] += tau32 * (p - target[i])

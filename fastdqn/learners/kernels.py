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
                out: np.ndarray) -> int:
    """out[:B] = obs[idx] / divisor, out[B:] = next_obs[idx] / divisor, as float32 rows.
    Returns -1, or the position in `idx` of a row outside [0, len(obs)) (nothing read for it:
    Numba indexes without bounds checks)."""
    b = idx.shape[0]
    d = obs.shape[1]
    for i in range(b):
        r = idx[i]
        if r < 0 or r >= obs.shape[0] or r >= next_obs.shape[0]:
            return i
        for j in range(d):
            out[i, j] = np.float32(obs[r, j]) / divisor
            out[b + i, j] = np.float32(next_obs[r, j]) / divisor
    return -1


@numba.njit(cache=True)
def td_grad(out: np.ndarray, out_target: np.ndarray, idx: np.ndarray, actions: np.ndarray,
            rewards: np.ndarray, dones: np.ndarray, discounts: np.ndarray, weights: np.ndarray,
            huber: bool, double: bool, dueling: bool, d_out: np.ndarray, grad_bias: np.ndarray,
            td_abs: np.ndarray, stats: np.ndarray) -> int:
    """dLoss/d(last layer outputs) for a batch, the last layer's bias gradient, |TD error| per
    row (the new priorities) and running loss / Q sums. Returns -1, or the position of a row
    whose stored action is outside [0, n_actions) (it indexes d_out: checked, not trusted),
    with nothing written.

    `out` holds the online net's last-layer outputs for [s; s'] (2B rows) when `double`, else
    for s (B rows); `out_target` the target net's for s'. Without `dueling` they are Q; with
    it they are [V, A_1..A_n] and Q_j = V + A_j - mean(A). y = R + discount * (1 - done) *
    Q_target(s', a*), a* the argmax of the online Q(s') (double DQN) or of Q_target(s') (first
    maximum wins, as torch.argmax). The loss is the mean over the batch of
    weight * (Huber(delta=1) or squared error); `weights` are all ones without PER.
    """
    b = idx.shape[0]
    n_out = out_target.shape[1]
    n_actions = n_out - 1 if dueling else n_out
    first = 1 if dueling else 0
    one = np.float32(1.0)
    inv_b = one / np.float32(b)
    inv_n = one / np.float32(n_actions)
    q_next = np.empty(n_actions, dtype=np.float32)
    q_choose = np.empty(n_actions, dtype=np.float32)
    for i in range(b):  # before any write: a refused batch leaves grad_bias and stats as they were
        a = actions[idx[i]]
        if a < 0 or a >= n_actions:
            return i
    for j in range(n_out):
        grad_bias[j] = 0.0
    loss = 0.0
    q_sum = 0.0
    for i in range(b):
        _q_row(out_target[i], dueling, first, n_actions, inv_n, q_next)
        if double:
            _q_row(out[b + i], dueling, first, n_actions, inv_n, q_choose)
        else:
            q_choose[:] = q_next
        best = 0
        for j in range(1, n_actions):
            if q_choose[j] > q_choose[best]:
                best = j
        r = idx[i]
        y = rewards[r] + discounts[r] * (one - dones[r]) * q_next[best]
        a = actions[r]  # in range: checked by the loop above
        q_a = out[i, first + a]
        if dueling:
            mean_adv = np.float32(0.0)
            for j in range(n_actions):
                mean_adv += out[i, first + j]
            q_a = (q_a - mean_adv / np.float32(n_actions)) + out[i, 0]
        diff = q_a - y
        td_abs[i] = abs(diff)
        w = weights[i]
        if huber:
            g = min(max(diff, -one), one) * w * inv_b
            loss += w * (0.5 * diff * diff if abs(diff) < 1.0 else abs(diff) - 0.5)
        else:
            g = np.float32(2.0) * diff * w * inv_b
            loss += w * diff * diff
        for j in range(n_out):
            d_out[i, j] = 0.0
        if dueling:  # dV = sum_j dQ_j = g; dA_j = dQ_j - mean(dQ) = [j == a] g - g / n
            d_out[i, 0] = g
            for j in range(n_actions):
                d_out[i, 1 + j] = -g * inv_n
            d_out[i, 1 + a] += g
        else:
            d_out[i, a] = g
        for j in range(n_out):
            grad_bias[j] += d_out[i, j]
        q_sum += q_a
    stats[0] += loss / b
    stats[1] += q_sum / b
    stats[2] += 1.0
    return -1


@numba.njit(cache=True, inline="always")
def _q_row(out_row: np.ndarray, dueling: bool, first: int, n_actions: int, inv_n: np.float32,
           q: np.ndarray) -> None:
    """Q-values of one row of last-layer outputs (the dueling combination, or themselves)."""
    if dueling:
        mean_adv = np.float32(0.0)
        for j in range(n_actions):
            mean_adv += out_row[first + j]
        mean_adv /= np.float32(n_actions)
        for j in range(n_actions):
            q[j] = (out_row[first + j] - mean_adv) + out_row[0]
    else:
        for j in range(n_actions):
            q[j] = out_row[j]


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

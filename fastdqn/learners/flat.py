"""TD targets, loss, gradient step and target-network update; pure tensor code, testable on CPU.

All state lives in a few flat tensors (online params, their grad, target params, Adam moments),
so one update is a fixed sequence of tensor ops on fixed buffers: no host syncs, and on CUDA the
whole K-step update can be captured as a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fastdqn.core import cuda_capture
from fastdqn.core.selfcheck import check_route, disagreement, warn_fallback
from fastdqn.learners import kernels, native
from fastdqn.nets.mlp import MLP, preprocess
from fastdqn.replay.prioritized import PrioritizedSampler, TorchPrioritized
from fastdqn.replay.rows import Batch, ReplayBuffer
from fastdqn.replay.uniform import UniformSampler


def td_target(net: MLP, online: list, target: list, rewards: torch.Tensor, next_obs: torch.Tensor,
              dones: torch.Tensor, discounts: float | torch.Tensor, double: bool) -> torch.Tensor:
    """y = R + discount * (1 - terminated) * Q_target(s', a*), a* from the online net if double
    (discount: gamma for 1-step rows, gamma^k per row for n-step ones)."""
    x = preprocess(next_obs)
    q_online_next = net.forward(online, x) if double else None
    return bootstrap(rewards, dones, net.forward(target, x), q_online_next, discounts)


def bootstrap(rewards: torch.Tensor, dones: torch.Tensor, q_target_next: torch.Tensor,
              q_online_next: torch.Tensor | None, discounts: float | torch.Tensor
              ) -> torch.Tensor:
    """The TD target from next-state Q-values: the target net's value at the online argmax
    (double DQN) or its own max; the learner passes the online Q(s') it already computed."""
    if q_online_next is not None:
        a_star = q_online_next.argmax(1, keepdim=True)
        q_next = q_target_next.gather(1, a_star).squeeze(1)
    else:
        q_next = q_target_next.amax(1)
    return rewards + discounts * (1.0 - dones) * q_next


def _no_lap(stage: str) -> None:
    """The default `lap` of `Learner.learn`: no timing."""


STATS_EVERY = 8
"""Loss and mean Q are recorded on every 8th learner step: the logged means are unbiased
samples, and the other steps skip three ops."""


class FlatAdam:
    """Adam over one flat parameter vector, called without torch.optim's per-step Python work.

    torch.optim.Adam spends ~70 us of Python per step on a single tensor (measured here), more
    than the update itself. This calls the same fused kernel directly where the device has it
    and otherwise runs the textbook update as five in-place ops on the flat vectors. The step
    count is a device tensor, so the update needs no host sync and can be graph-captured.
    """

    def __init__(self, params: torch.Tensor, grad: torch.Tensor, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.grad = params, grad
        self.lr, self.betas, self.eps = lr, betas, eps
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        self.step_count = torch.zeros((), dtype=torch.float32, device=params.device)
        fused = getattr(torch, "_fused_adam_", None)
        self.kind = "fused" if fused is not None and self._fused_works() else "flat"

    def _fused_works(self) -> bool:
        """Try the fused kernel once on scratch tensors of this device."""
        try:
            p = torch.zeros(4, device=self.params.device)
            torch._fused_adam_([p], [torch.ones_like(p)], [torch.zeros_like(p)],
                               [torch.zeros_like(p)], [], [torch.ones((), device=p.device)],
                               lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                               amsgrad=False, maximize=False)
            return True
        except (RuntimeError, NotImplementedError, TypeError):
            return False

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        self.step_count += 1
        if self.kind == "fused":
            torch._fused_adam_([self.params], [self.grad], [self.exp_avg], [self.exp_avg_sq], [],
                               [self.step_count], lr=self.lr, beta1=b1, beta2=b2,
                               weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)
            return
        self.exp_avg.lerp_(self.grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(self.grad, self.grad, value=1 - b2)
        bc1 = 1 - torch.pow(b1, self.step_count)
        bc2_sqrt = (1 - torch.pow(b2, self.step_count)).sqrt_()
        denom = (self.exp_avg_sq.sqrt() / bc2_sqrt).add_(self.eps)
        self.params.addcdiv_(self.exp_avg, denom * (bc1 / self.lr), value=-1.0)

    def state_dict(self) -> dict:
        return {"exp_avg": self.exp_avg.cpu().clone(), "exp_avg_sq": self.exp_avg_sq.cpu().clone(),
                "step": self.step_count.cpu().clone(), "lr": self.lr, "betas": list(self.betas),
                "eps": self.eps}

    def load_state_dict(self, state: dict) -> None:
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.step_count.copy_(state["step"])


class Learner:
    """Online and target MLP parameters plus Adam, updated by `update(batch)` or, from the
    replay buffer, by `learn`, on the route its arguments name (`fused` on a CPU, `native`
    first there, `cuda_graphs` on CUDA, torch ops elsewhere): route.py chooses them for a run."""

    def __init__(self, net: MLP, *, lr: float, gamma: float, tau: float,
                 target_update_interval: int, loss: str = "huber", double_dqn: bool = True,
                 max_grad_norm: float = 10.0, adam_eps: float = 1e-8,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None,
                 init: torch.Tensor | None = None, fused: bool | None = None,
                 cuda_graphs: bool = True, native: bool = True,
                 native_why: str = "--learner numba") -> None:
        self.net = net
        self.device = torch.device(device)
        flat = init if init is not None else net.init(generator or torch.Generator())
        self.params = flat.to(self.device, torch.float32).clone()
        self.grad = torch.zeros_like(self.params)
        self.target = self.params.clone()
        self.online_views = net.views(self.params)
        self.target_views = net.views(self.target)
        self.grad_views = net.views(self.grad)
        self.optimizer = FlatAdam(self.params, self.grad, lr, eps=adam_eps)
        self.adam_kind = self.optimizer.kind
        self.gamma, self.tau, self.interval = gamma, tau, target_update_interval
        self.loss_kind, self.double, self.max_grad_norm = loss, double_dqn, max_grad_norm
        self.steps = 0
        # Running sums for logging, read (one host sync) only when the logger asks.
        self.loss_sum = torch.zeros((), device=self.device)
        self.q_sum = torch.zeros((), device=self.device)
        self.stat_count = 0
        # `learn` routes: the numba-fused CPU step, CUDA graphs, or plain torch ops.
        self.fused = self.device.type == "cpu" if fused is None else fused
        self.cuda_graphs = cuda_graphs
        self._cpu: CpuStep | native.NativeStep | None = None
        # The fused CPU route runs the native step (csrc/) where `native` (route.py) says to
        # try it and it builds and passes its self-check, else the Numba one; `native_off` says
        # why not (`native_why` where it is not tried; None: it is in use or not tried yet).
        self.native = native
        self.native_off: str | None = None if native else native_why
        self._graphs: GraphedSteps | None = None
        self.fused_stats = np.zeros(3)
        # Why the CUDA-graph route failed its self-check (None: it has not); summary.json
        # reports `fallbacks` so a run that silently lost its fast route says so.
        self.graphs_fallback: str | None = None
        self.fallbacks: list[str] = []
        # Prioritized replay on the device: the sampler, beta as a device scalar (so that an
        # annealed beta needs no new graph) and the generator of the stratified offsets.
        self.device_sampler: TorchPrioritized | None = None
        self.beta = torch.ones((), dtype=torch.float64, device=self.device)
        self.per_generator = torch.Generator(self.device).manual_seed(0)

    def update(self, batch: Batch) -> None:
        """One gradient step on `batch`, then the target update when it is due."""
        self.step(batch)
        self.maybe_update_target()

    def _route(self, device: torch.device) -> str:
        """The route `learn` takes for a buffer on `device`: cpu-fused, cuda-graphs or torch-ops."""
        if self.fused and device.type == "cpu":
            return "cpu-fused"
        if self.cuda_graphs and device.type == "cuda":
            return "cuda-graphs"
        return "torch-ops"

    def route(self, device: torch.device) -> str:
        """`learn`'s route for a buffer on `device`, as summary.json reports it."""
        route = self._route(device)
        if route == "cpu-fused" and isinstance(self._cpu, native.NativeStep):
            return "cpu-fused (native step: one C++ call per block, sgemm + loops)"
        if route == "cpu-fused":
            why = f"; native step off: {self.native_off}" if self.native_off else ""
            return f"cpu-fused (torch GEMMs + numba kernels{why})"
        if self.graphs_fallback is not None and device.type == "cuda":
            return f"{route} (Adam: {self.adam_kind}; cuda-graphs fell back: {self.graphs_fallback})"
        return f"{route} (Adam: {self.adam_kind})"

    def learn(self, buffer: ReplayBuffer, sampler, k: int, batch_size: int, beta: float = 1.0,
              lap: Callable[[str], None] = _no_lap, detach: bool = False) -> None:
        """K learner steps on batches `sampler` draws from `buffer`, each followed by the target
        update when it is due; `lap` marks the stages for the trainer's timer.

        A uniform sampler draws the whole [K, B] block at once (`learn_block`; `detach`: see
        there). A prioritized
        one draws step by step, since each step's |TD errors| become the priorities the next
        step samples from: the Numba sum tree (`PrioritizedSampler`) on a CPU buffer, the
        device-resident `TorchPrioritized` elsewhere (inside the CUDA graph on CUDA).
        """
        if isinstance(sampler, UniformSampler):
            self.learn_block(buffer, sampler.sample(buffer.size, k, batch_size), lap, detach)
        elif isinstance(sampler, TorchPrioritized):
            self.learn_prioritized_on_device(buffer, sampler, k, batch_size, beta, lap)
        else:
            self.learn_prioritized(buffer, sampler, k, batch_size, beta, lap)

    def learn_prioritized(self, buffer: ReplayBuffer, sampler: PrioritizedSampler, k: int,
                          batch_size: int, beta: float, lap: Callable[[str], None] = _no_lap
                          ) -> None:
        """K steps with the Numba sum tree: sample, step with importance weights, write the
        new |TD error| priorities back for exactly the sampled rows."""
        idx = np.empty(batch_size, dtype=np.int64)
        weights = np.empty(batch_size, dtype=np.float32)
        fused = self._route(buffer.device) == "cpu-fused"
        step = self.cpu_step(buffer, batch_size) if fused else None
        native_step = isinstance(step, native.NativeStep)  # it updates the target itself
        own_target = native_step or (fused and step.soft_target)
        for _ in range(k):
            sampler.sample(buffer.size, batch_size, beta, idx, weights)
            lap("sample")
            if native_step:
                td_abs = step.steps(idx, weights)
            elif fused:
                td_abs = step(idx, weights)
                self.steps += 1
            else:
                rows = torch.from_numpy(idx).to(buffer.device)
                w = torch.from_numpy(weights).to(buffer.device)
                td_abs = self.step(buffer.gather(rows), weights=w).cpu().numpy()
            lap("learn")
            sampler.update(idx, td_abs)
            if not own_target:
                self.maybe_update_target()
            lap("target")

    def cpu_step(self, buffer: ReplayBuffer, batch_size: int) -> CpuStep | native.NativeStep:
        """The fused CPU step for `buffer`: native where it builds and passes its self-check
        against the Numba step (once per learner; a failure warns once and keeps Numba)."""
        step = self._cpu
        if step is not None and step.buffer is buffer and step.b == batch_size:
            return step
        if self.native and self.native_off is None:
            try:
                reason = native_self_check(self, buffer, batch_size)
                if reason is None:
                    self._cpu = native.NativeStep(self, buffer, batch_size)
                    return self._cpu
                warn_fallback("the native learner step", "the Numba step", reason)
                self._native_off(reason, fault=True)
            except native.NativeUnavailable as e:
                self._native_unavailable(e)
        self._cpu = CpuStep(self, buffer, batch_size)
        return self._cpu

    @property
    def detached_blocks(self) -> int:
        """How many blocks ran beside the caller (`learn_block(detach=True)` on the native step)."""
        return self._cpu.detached if isinstance(self._cpu, native.NativeStep) else 0

    def wait_rows_copied(self) -> None:
        """Wait until a detached block has copied the rows it reads out of the replay: the
        replay takes no new row before this."""
        if isinstance(self._cpu, native.NativeStep):
            self._cpu.wait_copied()

    def settle(self, stop: bool = False) -> None:
        """Wait for a detached block (`learn_block(detach=True)`), if one runs: after this the
        parameters, Adam's state, the stats and `steps` are the learner's again. `stop`: also
        end the thread the blocks run on (a run ends with none, since processes fork after it)."""
        if isinstance(self._cpu, native.NativeStep):
            if stop:
                self._cpu.stop()
            else:
                self._cpu.wait()

    def native_block(self, buffer: ReplayBuffer, batch_size: int) -> native.NativeStep | None:
        """The native step that uniform [K, B] blocks on `buffer` run on here, or None where
        they take another route (Numba, a device, torch ops)."""
        if self._route(buffer.device) != "cpu-fused":
            return None
        step = self.cpu_step(buffer, batch_size)
        return step if isinstance(step, native.NativeStep) else None

    def native_actor(self, obs_dtype: torch.dtype, params: torch.Tensor | None = None
                     ) -> native.NativeActor | None:
        """The native actor for observations of `obs_dtype` on the live parameters (or on
        `params`, a copy of them), or None where the native route is off or unavailable (that
        warns once, as for the step)."""
        if not (self.native and self.native_off is None and self.fused
                and self.device.type == "cpu"):
            return None
        try:
            return native.NativeActor(self, obs_dtype, params)
        except native.NativeUnavailable as e:
            self._native_unavailable(e)
            return None

    def _native_unavailable(self, e: native.NativeUnavailable) -> None:
        """A machine that cannot run the native step warns once; a layout it does not take
        (NativeUnsupported) is only noted in the route."""
        fault = not isinstance(e, native.NativeUnsupported)
        if fault:
            native.warn_unavailable(str(e))
        self._native_off(str(e), fault)

    def _native_off(self, reason: str, fault: bool) -> None:
        """The native route is off for good on this learner, for `reason` (a `fault` is also
        listed in `fallbacks`, which summary.json reports)."""
        if fault:
            self.fallbacks.append(f"learner native step: {reason}")
        self.native_off = reason

    def learn_prioritized_on_device(self, buffer: ReplayBuffer, sampler: TorchPrioritized, k: int,
                                    batch_size: int, beta: float,
                                    lap: Callable[[str], None] = _no_lap) -> None:
        """K steps with device-resident priorities and no host sync: the K x B stratified
        offsets are drawn in one call, then each step samples, learns and writes its
        priorities back, as eager torch ops here and captured in one CUDA graph on CUDA."""
        self.device_sampler = sampler
        self.beta.fill_(beta)
        uniforms = torch.rand((k, batch_size), generator=self.per_generator, dtype=torch.float64,
                              device=self.device)
        if self._route(buffer.device) == "cuda-graphs":
            if self._graphs is None or self._graphs.buffer is not buffer:
                self._graphs = GraphedSteps(self, buffer, sampler)
            lap("sample")
            self._graphs(uniforms)
            lap("learn")
            return
        self.prioritized_steps(buffer, sampler, uniforms, lap)

    def prioritized_steps(self, buffer: ReplayBuffer, sampler: TorchPrioritized,
                          uniforms: torch.Tensor, lap: Callable[[str], None] = _no_lap,
                          stats: bool | None = None) -> None:
        """One prioritized step per row of offsets, each followed by the due target update."""
        for row in uniforms:
            self.prioritized_step(buffer, sampler, row, stats)
            lap("learn")
            self.maybe_update_target()
            lap("target")

    def prioritized_step(self, buffer: ReplayBuffer, sampler: TorchPrioritized,
                         uniforms: torch.Tensor, stats: bool | None = None) -> None:
        """Sample with the B offsets `uniforms`, learn with the importance weights, write the
        new priorities back: torch ops only, no host sync (capturable)."""
        idx, weights = sampler.sample_from_uniforms(uniforms, self.beta)
        td_abs = self.step(buffer.gather(idx), stats, weights)
        sampler.update(idx, td_abs)

    def learn_block(self, buffer: ReplayBuffer, idx: np.ndarray,
                    lap: Callable[[str], None] = _no_lap, detach: bool = False) -> None:
        """K = len(idx) learner steps on a sampled [K, B] index block of uniform draws.

        Three routes to the same math: on a CPU the numba-fused step (`CpuStep`), on CUDA the K
        steps replayed as one CUDA graph (`GraphedSteps`), elsewhere (MPS, or with both turned
        off) the torch ops of `step` on batches gathered in one index_select per field.

        `detach`: on the native step the block runs on a thread of its own while the caller
        goes on; the caller writes the replay only after `wait_rows_copied`, and acts, logs,
        evaluates or saves only after `settle`. Every other route runs in line.
        """
        route = self._route(buffer.device)
        if route == "cpu-fused":
            step = self.cpu_step(buffer, idx.shape[1])
            lap("sample")
            if isinstance(step, native.NativeStep):
                if detach:
                    step.start(idx)  # same steps as step.steps(idx), bit for bit
                else:
                    step.steps(idx)  # K steps, target updates included, in one call
                lap("learn")
                return
            for row in idx:
                step(row, None)  # with the soft target update every step fused in
                self.steps += 1
                lap("learn")
                if not step.soft_target:
                    self.maybe_update_target()
                lap("target")
            return
        if route == "cuda-graphs":
            if self._graphs is None or self._graphs.buffer is not buffer:
                self._graphs = GraphedSteps(self, buffer)
            lap("sample")
            self._graphs(idx)
            lap("learn")
            return
        batches = self.gather(buffer, idx)
        lap("sample")
        self.eager_steps(batches, lap)

    def prove_fast_route(self, buffer: ReplayBuffer, idx: np.ndarray | torch.Tensor,
                         fast: Callable, eager: Callable | None = None) -> bool:
        """Run the block `idx` on `fast` (the CUDA-graph route), then again from the same state
        on `eager` (by default the torch ops of `eager_steps`), and compare every tensor a step
        changes (prioritized replay's priorities included); the eager result is kept, so the
        run follows the eager trajectory whatever `fast` did.

        If `fast` raised or disagrees, CUDA graphs are off for good: one warning, the reason in
        `fallbacks` and `route()`. Returns whether `fast` may carry the next blocks.
        """
        if eager is None:
            def eager(rows: np.ndarray) -> None:
                self.eager_steps(self.gather(buffer, rows), stats=True)  # graphs record all

        if self.graphs_fallback is not None:
            eager(idx)
            return False
        before = self.snapshot()

        def run(route: Callable[[np.ndarray], None]) -> dict[str, torch.Tensor]:
            route(idx)
            return self.snapshot()

        reason = check_route(lambda: run(fast), lambda: run(eager), lambda: self.restore(before),
                             before)
        if reason is None:
            return True
        self.graphs_fallback = reason
        self.cuda_graphs, self._graphs = False, None
        self.fallbacks.append(f"learner cuda-graphs: {reason}")
        warn_fallback("learner CUDA graphs", "eager torch ops", reason)
        return False

    def _live_state(self) -> dict[str, torch.Tensor]:
        opt = self.optimizer
        state = {"params": self.params, "target": self.target, "grad": self.grad,
                 "exp_avg": opt.exp_avg, "exp_avg_sq": opt.exp_avg_sq,
                 "step_count": opt.step_count, "loss_sum": self.loss_sum, "q_sum": self.q_sum}
        if self.device_sampler is not None:
            state["priorities"] = self.device_sampler.priorities
            state["max_priority"] = self.device_sampler.max_priority
        return state

    @torch.no_grad()
    def snapshot(self) -> dict[str, torch.Tensor]:
        """Copies of everything a learner step changes, counters included (on the device, no
        host sync): what the self-check compares and restores."""
        snap = {name: t.clone() for name, t in self._live_state().items()}
        snap["steps"] = torch.tensor(float(self.steps))
        snap["stat_count"] = torch.tensor(float(self.stat_count))
        return snap

    @torch.no_grad()
    def restore(self, snap: dict[str, torch.Tensor]) -> None:
        """Back to a `snapshot`, in place: captured graphs keep pointing at the same storage."""
        for name, t in self._live_state().items():
            t.copy_(snap[name])
        self.steps, self.stat_count = int(snap["steps"]), int(snap["stat_count"])

    @staticmethod
    def gather(buffer: ReplayBuffer, idx: np.ndarray) -> list[Batch]:
        """The K batches of a [K, B] index block, in one index_select per field."""
        flat = torch.from_numpy(idx).view(-1).to(buffer.device, non_blocking=True)
        return buffer.gather(flat).split(idx.shape[0])

    def eager_steps(self, batches: list[Batch], lap: Callable[[str], None] = _no_lap,
                    stats: bool | None = None) -> None:
        """`step` then the due target update on each batch, as plain torch ops."""
        for batch in batches:
            self.step(batch, stats)
            lap("learn")
            self.maybe_update_target()
            lap("target")

    @torch.no_grad()
    def step(self, batch: Batch, stats: bool | None = None,
             weights: torch.Tensor | None = None) -> torch.Tensor:
        """Loss gradient, clipping and Adam: one learner step (the target is left alone);
        returns |TD error| per row."""
        td_abs = self.compute_grad(batch, stats, weights)
        self.clip_grad()
        self.optimizer.step()
        self.steps += 1
        return td_abs

    def maybe_update_target(self) -> None:
        """The target update, every `target_update_interval` learner steps."""
        if self.steps % self.interval == 0:
            self.update_target()

    @torch.no_grad()
    def compute_grad(self, batch: Batch, stats: bool | None = None,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
        """Loss gradient into self.grad (hand-written backward; tested against autograd and the
        reference learner); returns |TD error| per row. `weights` (PER importance weights)
        scale each row's loss. `stats` records loss and mean Q; by default on every
        STATS_EVERY-th step.
        """
        n = batch.obs.shape[0]
        x, x_next = preprocess(batch.obs), preprocess(batch.next_obs)
        q_online_next = None
        if self.double:
            # One online pass over [s; s'] instead of two: Q(s) for the loss, Q(s') for a*.
            q_both, acts = self.net.forward_train(self.online_views, torch.cat([x, x_next]))
            q, acts, q_online_next = q_both[:n], [h[:n] for h in acts], q_both[n:]
        else:
            q, acts = self.net.forward_train(self.online_views, x)
        y = bootstrap(batch.rewards, batch.dones, self.net.forward(self.target_views, x_next),
                      q_online_next, batch.discounts)
        a = batch.actions.unsqueeze(1)
        q_a = q.gather(1, a).squeeze(1)
        diff = q_a - y
        td_abs = diff.abs()
        huber = self.loss_kind == "huber"
        if stats if stats is not None else self.steps % STATS_EVERY == 0:
            per_row = (F.smooth_l1_loss(q_a, y, reduction="none") if huber
                       else F.mse_loss(q_a, y, reduction="none"))
            self.loss_sum += (per_row * weights).mean() if weights is not None else per_row.mean()
            self.q_sum += q_a.mean()
            self.stat_count += 1
        g = diff.clamp_(-1.0, 1.0).div_(n) if huber else diff.mul_(2.0 / n)
        if weights is not None:
            g.mul_(weights)
        dq = torch.zeros_like(q).scatter_(1, a, g.unsqueeze(1))
        self.net.backward(self.online_views, acts, dq, self.grad_views)
        return td_abs

    @torch.no_grad()
    def clip_grad(self) -> None:
        """Scale the flat gradient to norm <= max_grad_norm without a host sync."""
        if self.max_grad_norm > 0:
            g = self.grad
            scale = (self.max_grad_norm / (torch.linalg.vector_norm(g) + 1e-6)).clamp_(max=1.0)
            g.mul_(scale)

    @torch.no_grad()
    def update_target(self) -> None:
        """target <- tau*online + (1-tau)*target: one lerp over the flat vector (tau=1 copies)."""
        if self.tau >= 1.0:
            self.target.copy_(self.params)
        else:
            self.target.lerp_(self.params, self.tau)

    def pop_stats(self) -> tuple[float, float] | None:
        """Mean loss and mean Q(s,a) since the last call (this is the host sync), or None."""
        count = self.stat_count + self.fused_stats[2]
        if count == 0:
            return None
        loss = (float(self.loss_sum) + self.fused_stats[0]) / count
        q = (float(self.q_sum) + self.fused_stats[1]) / count
        self.loss_sum.zero_()
        self.q_sum.zero_()
        self.stat_count = 0
        self.fused_stats[:] = 0.0
        return loss, q

    @torch.no_grad()
    def all_finite(self) -> bool:
        """Are the parameters, target and Adam moments free of NaN and inf? (one host sync)"""
        ok = torch.isfinite(self.params).all()
        for t in (self.target, self.optimizer.exp_avg, self.optimizer.exp_avg_sq):
            ok &= torch.isfinite(t).all()
        return bool(ok)

    def state_dict(self) -> dict:
        return {"params": self.params.cpu().clone(), "target": self.target.cpu().clone(),
                "optimizer": self.optimizer.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.params.copy_(state["params"].to(self.device))
            self.target.copy_(state["target"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])


class CpuStep:
    """One learner step on a CPU: torch GEMMs into preallocated buffers, numba for the rest.

    The same math as `Learner.compute_grad` + `clip_grad` + `FlatAdam.step` (the tests check
    that both give the same parameters), in about 20 calls instead of about 50 torch ops, with
    no allocation: on a CPU the per-op dispatch, not the arithmetic, is what the unfused step
    spends most of its time on. It reads the learner's tensors and the replay buffer in place.
    """

    def __init__(self, learner: Learner, buffer: ReplayBuffer, batch_size: int) -> None:
        net, b = learner.net, batch_size
        self.learner, self.buffer = learner, buffer
        self.double = learner.double
        rows = 2 * b if self.double else b
        empty = torch.empty
        self.x = empty(2 * b, net.in_dim)
        sizes = [*net.hidden, net.n_out]
        self.h = [empty(rows, n) for n in sizes]
        self.h_target = [empty(b, n) for n in sizes]
        self.d = [empty(b, n) for n in sizes]
        self.online = [(w.t(), bias) for w, bias in learner.online_views]
        self.target = [(w.t(), bias) for w, bias in learner.target_views]
        self.weights = [w for w, _ in learner.online_views]
        self.grad_w = [gw for gw, _ in learner.grad_views]
        self.grad_b = [gb.numpy() for _, gb in learner.grad_views]
        self.inputs = [self.x[:b]] + [h[:b] for h in self.h[:-1]]
        self.h_np = [h[:b].numpy() for h in self.h]
        self.x_np, self.q_np = self.x.numpy(), self.h[-1].numpy()
        self.q_target_np = self.h_target[-1].numpy()
        self.d_np = [d.numpy() for d in self.d]
        cap = buffer.capacity
        self.obs = buffer.obs.view(cap, -1).numpy()
        self.next_obs = buffer.next_obs.view(cap, -1).numpy()
        self.actions, self.rewards = buffer.actions.numpy(), buffer.rewards.numpy()
        self.dones, self.discounts = buffer.dones.numpy(), buffer.discounts.numpy()
        self.ones = np.ones(b, dtype=np.float32)
        self.td_abs = np.empty(b, dtype=np.float32)
        self.dueling = net.dueling
        self.divisor = np.float32(255.0 if buffer.obs.dtype == torch.uint8 else 1.0)
        opt = learner.optimizer
        self.adam = (learner.params.numpy(), learner.grad.numpy(), opt.exp_avg.numpy(),
                     opt.exp_avg_sq.numpy(), opt.step_count.view(1).numpy())
        self.soft_target = learner.interval == 1 and learner.tau < 1.0
        self.adam_args = (float(opt.lr), float(opt.betas[0]), float(opt.betas[1]), float(opt.eps),
                          float(learner.max_grad_norm), learner.target.numpy(),
                          float(learner.tau) if self.soft_target else 0.0)
        self.huber = learner.loss_kind == "huber"
        self.b = b

    @staticmethod
    def _forward(layers: list, x: torch.Tensor, outs: list[torch.Tensor]) -> None:
        last = len(layers) - 1
        for i, ((wt, bias), out) in enumerate(zip(layers, outs)):
            torch.addmm(bias, x, wt, out=out)
            if i < last:
                out.relu_()
            x = out

    def __call__(self, idx: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
        """One step on rows `idx` (PER `weights`, or None); returns |TD error| per row (a view
        the next call overwrites)."""
        b, x, n = self.b, self.x, self.buffer.size
        # Rows and stored actions index arrays that Numba does not bounds-check: the kernels
        # check them (rows against the filled ones) and refuse before any update.
        if kernels.gather_rows(idx, self.obs[:n], self.next_obs[:n], self.divisor,
                               self.x_np) >= 0:
            raise native.replay_fault(idx, n, self.actions, self.learner.net.n_actions)
        self._forward(self.online, x if self.double else x[:b], self.h)
        self._forward(self.target, x[b:], self.h_target)
        last = len(self.h) - 1
        if kernels.td_grad(self.q_np, self.q_target_np, idx, self.actions, self.rewards,
                           self.dones, self.discounts, self.ones if weights is None else weights,
                           self.huber, self.double, self.dueling, self.d_np[last],
                           self.grad_b[last], self.td_abs, self.learner.fused_stats) >= 0:
            raise native.replay_fault(idx, n, self.actions, self.learner.net.n_actions)
        for i in range(last, -1, -1):
            torch.mm(self.d[i].t(), self.inputs[i], out=self.grad_w[i])
            if i > 0:
                torch.mm(self.d[i], self.weights[i], out=self.d[i - 1])
                kernels.relu_backward(self.d_np[i - 1], self.h_np[i - 1], self.grad_b[i - 1])
        kernels.clip_adam(*self.adam, *self.adam_args)
        return self.td_abs


def native_self_check(learner: Learner, buffer: ReplayBuffer, batch_size: int) -> str | None:
    """Why the native step must not carry `learner` on `buffer` (None: it may).

    The native and Numba steps run three steps each (a [2, B] block, then one step with
    importance weights) from the same state on scratch copies of the learner: its parameters,
    options and network, but Adam's eps raised to 1e-3, because near eps = 1e-8 Adam's first
    update maps a gradient difference of float rounding (1e-9) onto a large step difference,
    and two correct routes would disagree. The step counter starts one short of a hard target
    update, so that update is compared too. The run's own state and random streams are untouched.
    Raises NativeUnavailable when the library cannot be built or loaded.
    """
    if buffer.size == 0:
        return "the replay buffer is empty"

    def scratch() -> Learner:
        lr = Learner(learner.net, lr=learner.optimizer.lr, gamma=learner.gamma, tau=learner.tau,
                     target_update_interval=learner.interval, loss=learner.loss_kind,
                     double_dqn=learner.double, max_grad_norm=learner.max_grad_norm,
                     adam_eps=1e-3, init=learner.params.detach().cpu(), native=False)
        lr.target.copy_(learner.target)
        lr.steps = learner.interval - 1
        return lr

    fast, slow = scratch(), scratch()
    # first: a batch it refuses allocates nothing here
    step = native.NativeStep(fast, buffer, batch_size)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, buffer.size, (3, batch_size))
    weights = rng.uniform(0.2, 1.0, batch_size).astype(np.float32)
    step.steps(idx[:2])
    td_fast = torch.from_numpy(step.steps(idx[2], weights).copy())
    ref = CpuStep(slow, buffer, batch_size)
    for j, row in enumerate(idx):
        td_slow = torch.from_numpy(ref(row, weights if j == 2 else None).copy())
        slow.steps += 1
        if not ref.soft_target:
            slow.maybe_update_target()

    def state(lr: Learner, td: torch.Tensor) -> dict[str, torch.Tensor]:
        opt = lr.optimizer
        return {"params": lr.params, "target": lr.target, "grad": lr.grad,
                "exp_avg": opt.exp_avg, "exp_avg_sq": opt.exp_avg_sq, "td_abs": td,
                "stats": torch.from_numpy(lr.fused_stats), "steps": torch.tensor(lr.steps)}

    start = state(scratch(), torch.zeros(batch_size))
    return disagreement(state(fast, td_fast), state(slow, td_slow), start)


class GraphedSteps:
    """The learner's K steps (gather, loss gradient, clipping, Adam, soft target update) as one
    CUDA graph per K, replayed with a single launch instead of about 50 kernel launches a step.

    The index block is the graph's only input: it is copied from pinned memory into a static
    device tensor before each replay. Every other tensor the graph touches (params, grad, Adam
    moments and step count, target, replay storage) has a fixed address for the run. The first
    WARMUP blocks run eagerly on a side stream (cuBLAS and the allocator settle there, as CUDA
    graph capture requires), and they are real training steps, so a graphed run follows the same
    trajectory as an eager one. With a hard target update every C > 1 steps, single steps are
    graphed and the copy runs between them when due.

    Every CUDA call runs under the buffer's device: streams, events and capture otherwise
    belong to whichever device is current, and a capture on cuda:0 records nothing of work on
    cuda:1. Each graph proves itself on its first block (`Learner.prove_fast_route`) before it
    is trusted.
    """

    WARMUP = 3

    def __init__(self, learner: Learner, buffer: ReplayBuffer,
                 sampler: TorchPrioritized | None = None) -> None:
        self.learner, self.buffer, self.sampler = learner, buffer, sampler
        self.device = buffer.device
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.hosts: dict[tuple, tuple[torch.Tensor, torch.cuda.Event]] = {}
        self.blocks_seen = 0
        self.per_graph_target = learner.interval == 1
        self.side = torch.cuda.Stream(device=self.device)
        self.capture_stream = torch.cuda.Stream(device=self.device)

    def _steps(self, block: torch.Tensor) -> None:
        """What a graph records: one step per row of the block (indices, or with prioritized
        replay the stratified offsets the step samples with)."""
        lr = self.learner
        for row in block:
            if self.sampler is None:
                lr.step(self.buffer.gather(row), stats=True)
            else:
                lr.prioritized_step(self.buffer, self.sampler, row, stats=True)
            if self.per_graph_target:
                lr.update_target()

    def _eager(self, block: np.ndarray | torch.Tensor) -> None:
        """The same steps as eager torch ops (stats on every step, as the graphs record)."""
        lr = self.learner
        if self.sampler is None:
            lr.eager_steps(lr.gather(self.buffer, block), stats=True)
        else:
            lr.prioritized_steps(self.buffer, self.sampler, block, stats=True)

    def __call__(self, block: np.ndarray | torch.Tensor) -> None:
        """K steps on `block`: a [K, B] index array, or [K, B] device offsets with PER."""
        with torch.cuda.device(self.device):
            if self.blocks_seen < self.WARMUP:
                self.blocks_seen += 1
                self._warm_up(block)
            elif self._shape(block) in self.graphs:
                self._replay(block)
            else:  # this block captures a graph: it must match eager ops before it is used
                self.learner.prove_fast_route(self.buffer, block, self._replay, self._eager)

    def _shape(self, idx: np.ndarray) -> tuple[int, int]:
        """The (K, B) of the graph that runs `idx`: all of it, or one step at a time."""
        return (idx.shape[0] if self.per_graph_target else 1), idx.shape[1]

    def _warm_up(self, block: np.ndarray | torch.Tensor) -> None:
        cuda_capture.warm_up(self.side, lambda: self._eager(block))

    def _stage(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.cuda.Event]:
        """`idx` in the pinned staging block of its shape, and the event that the block's
        upload records. The block is rewritten only after the host has waited on that event:
        the previous non_blocking copy may still be reading it."""
        entry = self.hosts.get(idx.shape)
        if entry is None:
            host = torch.empty(idx.shape, dtype=torch.int64, pin_memory=True)
            entry = self.hosts[idx.shape] = (host, torch.cuda.Event())
        host, uploaded = entry
        uploaded.synchronize()  # returns at once if nothing was recorded yet
        host.numpy()[...] = idx
        return host, uploaded

    def _replay(self, idx: np.ndarray | torch.Tensor) -> None:
        """K learner steps on the graphs, capturing a graph on its first use."""
        lr = self.learner
        current = torch.cuda.current_stream(self.device)
        graph, static_idx = self._graph(*self._shape(idx))
        if self.sampler is not None:  # the offsets are already on the device
            host, uploaded = idx, torch.cuda.Event()
        else:
            host, uploaded = self._stage(idx)
        if self.per_graph_target:
            static_idx.copy_(host, non_blocking=True)
            uploaded.record(current)
            graph.replay()
            lr.steps += idx.shape[0]
            lr.stat_count += idx.shape[0]
            return
        rows = host.to(self.device, non_blocking=True)
        uploaded.record(current)
        for j in range(idx.shape[0]):
            static_idx.copy_(rows[j:j + 1])
            graph.replay()
            lr.steps += 1
            lr.stat_count += 1
            lr.maybe_update_target()

    def _graph(self, k: int, batch_size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        entry = self.graphs.get((k, batch_size))
        if entry is None:
            static_idx = torch.zeros((k, batch_size), device=self.device,
                                     dtype=torch.int64 if self.sampler is None else torch.float64)
            graph = torch.cuda.CUDAGraph()
            counts = self.learner.steps, self.learner.stat_count
            try:
                cuda_capture.capture(graph, self.capture_stream, lambda: self._steps(static_idx))
            finally:  # capture records the kernels without running them: no step happened
                self.learner.steps, self.learner.stat_count = counts
            entry = self.graphs[(k, batch_size)] = (graph, static_idx)
        return entry

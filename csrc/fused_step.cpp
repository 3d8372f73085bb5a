// fastdqn's CPU learner step as one native call: K DQN steps on an MLP (gather, forward of the
// online and target nets, TD target and loss gradient, backward, gradient clipping, Adam, target
// update) with no Python between them. The same math as fastdqn/learners/kernels.py + flat.CpuStep,
// which stays the reference it is checked against (fastdqn/learners/native.py, tests/test_native.py).
//
// Why it pays: the Numba route makes about 20 calls a step from Python, each a few microseconds
// of dispatch before any work; here a block of K steps is one ctypes call. The matrix products
// go to the sgemm_ that torch's own CPU build exports (MKL in the pip wheels), called directly:
// no ATen dispatch, no torch headers, so this file compiles in a couple of seconds.
//
// Layout: row-major, as the torch views. Parameters are one flat vector, per layer W [out, in]
// then b [out] (fastdqn/nets/mlp.py). The narrow products (an output layer of a few actions, a
// first layer of a few inputs) are written as loops: a BLAS call at N = 4 runs at a few GFLOP/s.

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <pthread.h>
#include <unistd.h>
#if defined(__linux__)
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#endif

// The calling thread's OpenMP team size, where torch's BLAS threads with OpenMP (weak: null
// where no OpenMP runtime is loaded).
extern "C" void omp_set_num_threads(int) __attribute__((weak));
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float* a, const int* lda,
                       const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc);

namespace {

constexpr int64_t kAbi = 5;
constexpr int kMaxLayers = 8;
constexpr int kNarrow = 16;  // products with a side this small are loops, not sgemm_ calls

// How observation rows are stored; each is read as float32, uint8 pixels scaled to [0, 1].
enum ObsKind : int64_t { kFloat32 = 0, kUint8 = 1, kBool = 2, kFloat64 = 3 };

int64_t obs_width(int64_t kind) {
  return kind == kFloat64 ? 8 : kind == kFloat32 ? 4 : 1;
}

// Row `r` of `n` observation values of `kind` at `base`, as float32 into `out`.
void read_obs(const void* base, int64_t kind, int64_t r, int64_t n, float* out) {
  switch (kind) {
    case kFloat32:
      std::memcpy(out, static_cast<const float*>(base) + r * n, n * sizeof(float));
      break;
    case kUint8: {
      const uint8_t* src = static_cast<const uint8_t*>(base) + r * n;
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(src[j]) / 255.0f;
      break;
    }
    case kBool: {
      const uint8_t* src = static_cast<const uint8_t*>(base) + r * n;
      for (int64_t j = 0; j < n; ++j) out[j] = src[j] ? 1.0f : 0.0f;
      break;
    }
    default: {
      const double* src = static_cast<const double*>(base) + r * n;
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(src[j]);
    }
  }
}

// Filled by fastdqn/learners/native.py (a ctypes.Structure with the same fields in the same order).
struct Spec {
  int64_t abi;
  int64_t n_layers;                // weight layers: hidden layers + 1
  int64_t sizes[kMaxLayers + 1];   // in_dim, hidden..., n_out
  int64_t batch;
  int64_t double_dqn, dueling, huber, obs_kind, interval;  // obs_kind: see ObsKind
  int64_t capacity;                // rows of the replay storage (0: an acting-only handle)
  double lr, beta1, beta2, eps, max_norm, tau;
  float *params, *grad, *target, *exp_avg, *exp_avg_sq, *step_count;
  const void *obs, *next_obs;
  const int64_t* actions;
  const float *rewards, *dones, *discounts;
};

// a . b over n floats, in 8 interleaved partial sums (so the compiler vectorizes it).
float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[k + u] * b[k + u];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
}

// Row-major C[M, N] = A[M, K] @ op(B), op(B) = B [K, N] or, with b_t, B stored [N, K].
void matmul(int64_t M, int64_t N, int64_t K, const float* A, const float* B, bool b_t, float* C) {
  if (N <= kNarrow && b_t) {  // C[i, j] = A[i, :] . B[j, :]: N dot products per row
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * N + j] = dot(A + i * K, B + j * K, K);
    return;
  }
  // Column-major BLAS: row-major C = A op(B) is column-major C^T = op(B)^T A^T.
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const float one = 1.0f, zero = 0.0f;
  const char ta = b_t ? 'T' : 'N', tb = 'N';
  const int lda = b_t ? k : m, ldb = k, ldc = m;
  sgemm_(&ta, &tb, &m, &n, &k, &one, B, &lda, A, &ldb, &zero, C, &ldc);
}

// Row-major G[O, I] = D[R, O]^T @ X[R, I] (a weight gradient); `scratch` holds O * I floats.
void matmul_tn(int64_t O, int64_t I, int64_t R, const float* D, const float* X, float* G,
               float* scratch) {
  if (O <= kNarrow) {  // O rows of G, each a sum of R scaled rows of X (vectorized along I)
    std::fill(G, G + O * I, 0.0f);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t o = 0; o < O; ++o) {
        const float s = D[r * O + o];  // no zero test: after a ReLU it is a coin flip
        const float* x = X + r * I;
        float* g = G + o * I;
        for (int64_t i = 0; i < I; ++i) g[i] += s * x[i];
      }
    return;
  }
  if (I <= kNarrow) {  // G^T [I, O] row by row (vectorized along O), then transposed into G
    std::fill(scratch, scratch + O * I, 0.0f);
    for (int64_t r = 0; r < R; ++r) {
      const float* d = D + r * O;
      for (int64_t i = 0; i < I; ++i) {
        const float s = X[r * I + i];
        float* gt = scratch + i * O;
        for (int64_t o = 0; o < O; ++o) gt[o] += s * d[o];
      }
    }
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) G[o * I + i] = scratch[i * O + o];
    return;
  }
  const int m = static_cast<int>(I), n = static_cast<int>(O), k = static_cast<int>(R);
  const float one = 1.0f, zero = 0.0f;
  const char ta = 'N', tb = 'T';
  sgemm_(&ta, &tb, &m, &n, &k, &one, X, &m, D, &n, &zero, G, &m);
}

// One step's batch, copied out of the replay: the step reads nothing of the buffer but this.
struct Rows {
  float* x;        // [2B, in]: obs rows then next_obs rows
  int64_t* acts;   // [B]: the checked actions
  float *rew, *disc, *done;  // [B] each: the TD target's scalars
};

struct Step {
  Spec s;
  std::vector<float> x;                        // [2B, in]: the step's obs then next_obs rows
  std::vector<std::vector<float>> h, ht, d;    // online [rows, n], target [B, n], grads [B, n]
  std::vector<float> q_next, q_choose, scratch;
  std::vector<int64_t> acts;                   // [B]: the checked actions of the gathered rows
  std::vector<float> rew, disc, done;          // [B]: the gathered rows' scalars
  // A detached block (fdqn_steps_start) runs on `worker`, a thread started with the first
  // block that then waits for the next (a thread per block cost ~150 us). It copies each step's
  // rows out of the replay just before the step, as fdqn_steps does, and says when it has
  // copied the last (`copied`): the caller writes the replay only after that.
  struct Worker {
    std::thread thread;
    std::mutex mu;
    std::condition_variable cv;
    bool running = false, copied = true, quit = false;  // under mu
    int64_t pid = 0;                                    // the process that started it
  };
  std::unique_ptr<Worker> w;                   // null until the first detached block
  bool pending = false;                        // a block was started and not yet waited for
  std::vector<int64_t> block_idx;              // [K, B]: the block's rows (a copy)
  int64_t block_k = 0, block_steps = 0, block_rows = 0, block_done = 0;
  float* block_td = nullptr;
  double* block_stats = nullptr;
  std::vector<float> act_x;                    // the acting batch: [n, in] and its layers
  std::vector<std::vector<float>> act_h;

  explicit Step(const Spec& spec) : s(spec) {
    const int64_t b = s.batch, rows = s.double_dqn ? 2 * b : b;
    x.resize(2 * b * s.sizes[0]);
    acts.resize(b);
    rew.resize(b);
    disc.resize(b);
    done.resize(b);
    for (int64_t l = 0; l < s.n_layers; ++l) {
      h.emplace_back(rows * s.sizes[l + 1]);
      ht.emplace_back(b * s.sizes[l + 1]);
      d.emplace_back(b * s.sizes[l + 1]);
    }
    q_next.resize(s.sizes[s.n_layers]);
    q_choose.resize(s.sizes[s.n_layers]);
    int64_t widest = 0;
    for (int64_t l = 0; l < s.n_layers; ++l) widest = std::max(widest, s.sizes[l] * s.sizes[l + 1]);
    scratch.resize(widest);
  }

  Rows gathered() {
    return {x.data(), acts.data(), rew.data(), disc.data(), done.data()};
  }

  int64_t w_off(int64_t l) const {
    int64_t off = 0;
    for (int64_t i = 0; i < l; ++i) off += s.sizes[i] * s.sizes[i + 1] + s.sizes[i + 1];
    return off;
  }

  // Start loading the rows `idx` names (obs, next_obs and the scalars): the block's next step
  // prefetches while this one computes, so the replay's random reads leave the critical path.
  void prefetch(const int64_t* idx) const {
    const int64_t dim = s.sizes[0], width = obs_width(s.obs_kind);
    for (int64_t i = 0; i < s.batch; ++i) {
      const int64_t r = idx[i];
      if (r < 0 || r >= s.capacity) continue;  // refused by gather; no address formed from it
      const char* o = static_cast<const char*>(s.obs) + r * dim * width;
      const char* n = static_cast<const char*>(s.next_obs) + r * dim * width;
      for (int64_t off = 0; off < dim * width; off += 64) {
        __builtin_prefetch(o + off);
        __builtin_prefetch(n + off);
      }
      __builtin_prefetch(s.actions + r);
      __builtin_prefetch(s.rewards + r);
      __builtin_prefetch(s.dones + r);
      __builtin_prefetch(s.discounts + r);
    }
  }

  int64_t n_actions() const { return s.sizes[s.n_layers] - (s.dueling ? 1 : 0); }

  // The rows `idx` names into `out`. The indices and the actions those rows hold are data (a
  // replay buffer can come from a file), and td_grad writes drow[a]: each is checked here, one
  // compare per row, before anything outside this object's scratch is read or written. False
  // when one is out of range ([0, rows) and [0, n_actions)).
  bool gather(const int64_t* idx, int64_t rows, const Rows& out) {
    const int64_t b = s.batch, dim = s.sizes[0], n_act = n_actions();
    for (int64_t i = 0; i < b; ++i) {
      const int64_t r = idx[i];
      if (r < 0 || r >= rows) return false;
      const int64_t a = s.actions[r];
      if (a < 0 || a >= n_act) return false;
      out.acts[i] = a;  // td_grad uses this checked copy, never a second read of the buffer
      out.rew[i] = s.rewards[r];
      out.disc[i] = s.discounts[r];
      out.done[i] = s.dones[r];
      read_obs(s.obs, s.obs_kind, r, dim, out.x + i * dim);
      read_obs(s.next_obs, s.obs_kind, r, dim, out.x + (b + i) * dim);
    }
    return true;
  }

  void forward(const float* params, const float* in, int64_t rows,
               std::vector<std::vector<float>>& out) {
    for (int64_t l = 0; l < s.n_layers; ++l) {
      const int64_t fi = s.sizes[l], fo = s.sizes[l + 1];
      const float* w = params + w_off(l);
      const float* bias = w + fi * fo;
      float* o = out[l].data();
      matmul(rows, fo, fi, in, w, true, o);
      const bool relu = l + 1 < s.n_layers;
      for (int64_t i = 0; i < rows; ++i) {
        float* row = o + i * fo;
        for (int64_t j = 0; j < fo; ++j) {
          const float v = row[j] + bias[j];
          row[j] = relu ? std::max(v, 0.0f) : v;
        }
      }
      in = o;
    }
  }

  void q_row(const float* out_row, int64_t n_actions, float* q) const {
    if (!s.dueling) {
      for (int64_t j = 0; j < n_actions; ++j) q[j] = out_row[j];
      return;
    }
    float mean_adv = 0.0f;
    for (int64_t j = 0; j < n_actions; ++j) mean_adv += out_row[1 + j];
    mean_adv /= static_cast<float>(n_actions);
    for (int64_t j = 0; j < n_actions; ++j) q[j] = (out_row[1 + j] - mean_adv) + out_row[0];
  }

  // dLoss/d(last outputs) into d.back(), its bias gradient, |TD| and the loss / Q sums.
  void td_grad(const Rows& in, const float* weights, float* grad_bias, float* td_abs,
               double* stats) {
    const int64_t b = s.batch, last = s.n_layers - 1, n_out = s.sizes[s.n_layers];
    const int64_t n_actions = s.dueling ? n_out - 1 : n_out, first = s.dueling ? 1 : 0;
    const float inv_b = 1.0f / static_cast<float>(b), inv_n = 1.0f / static_cast<float>(n_actions);
    const float* out = h[last].data();
    const float* out_t = ht[last].data();
    float* d_out = d[last].data();
    std::fill(grad_bias, grad_bias + n_out, 0.0f);
    double loss = 0.0, q_sum = 0.0;
    for (int64_t i = 0; i < b; ++i) {
      q_row(out_t + i * n_out, n_actions, q_next.data());
      if (s.double_dqn)
        q_row(out + (b + i) * n_out, n_actions, q_choose.data());
      else
        std::copy(q_next.begin(), q_next.begin() + n_actions, q_choose.begin());
      int64_t best = 0;
      for (int64_t j = 1; j < n_actions; ++j)
        if (q_choose[j] > q_choose[best]) best = j;
      const float y = in.rew[i] + in.disc[i] * (1.0f - in.done[i]) * q_next[best];
      const int64_t a = in.acts[i];
      float q_a = out[i * n_out + first + a];
      if (s.dueling) {
        float mean_adv = 0.0f;
        for (int64_t j = 0; j < n_actions; ++j) mean_adv += out[i * n_out + first + j];
        q_a = (q_a - mean_adv / static_cast<float>(n_actions)) + out[i * n_out];
      }
      const float diff = q_a - y;
      td_abs[i] = std::fabs(diff);
      const float w = weights ? weights[i] : 1.0f;
      float g;
      if (s.huber) {
        g = std::min(std::max(diff, -1.0f), 1.0f) * w * inv_b;
        loss += w * (std::fabs(diff) < 1.0f ? 0.5f * diff * diff : std::fabs(diff) - 0.5f);
      } else {
        g = 2.0f * diff * w * inv_b;
        loss += w * diff * diff;
      }
      float* drow = d_out + i * n_out;
      std::fill(drow, drow + n_out, 0.0f);
      if (s.dueling) {
        drow[0] = g;
        for (int64_t j = 0; j < n_actions; ++j) drow[1 + j] = -g * inv_n;
        drow[1 + a] += g;
      } else {
        drow[a] = g;
      }
      for (int64_t j = 0; j < n_out; ++j) grad_bias[j] += drow[j];
      q_sum += q_a;
    }
    stats[0] += loss / b;
    stats[1] += q_sum / b;
    stats[2] += 1.0;
  }

  void backward(const float* x0) {
    const int64_t b = s.batch;
    for (int64_t l = s.n_layers - 1; l >= 0; --l) {
      const int64_t fi = s.sizes[l], fo = s.sizes[l + 1];
      const float* in = l == 0 ? x0 : h[l - 1].data();  // first B rows: the obs half
      float* gw = s.grad + w_off(l);
      matmul_tn(fo, fi, b, d[l].data(), in, gw, scratch.data());
      if (l == 0) break;
      const float* w = s.params + w_off(l);
      float* dp = d[l - 1].data();
      matmul(b, fi, fo, d[l].data(), w, false, dp);
      const float* hp = h[l - 1].data();
      float* gb = s.grad + w_off(l - 1) + s.sizes[l - 1] * fi;
      std::fill(gb, gb + fi, 0.0f);
      for (int64_t i = 0; i < b; ++i)
        for (int64_t j = 0; j < fi; ++j) {
          const float v = hp[i * fi + j] > 0.0f ? dp[i * fi + j] : 0.0f;
          dp[i * fi + j] = v;
          gb[j] += v;
        }
    }
  }

  int64_t n_params() const { return w_off(s.n_layers); }

  // Q-values of n observations under the online parameters into q [n, n_actions]; with
  // `uniforms` ([2, n]) also the epsilon-greedy actions: row i explores if uniforms[i] < eps,
  // then takes action floor(uniforms[n + i] * n_actions), else the first argmax of its Q.
  void act(const void* obs, int64_t n, const float* uniforms, float eps, float* q,
           int64_t* actions) {
    const int64_t dim = s.sizes[0], n_out = s.sizes[s.n_layers];
    const int64_t n_actions = s.dueling ? n_out - 1 : n_out;
    act_x.resize(n * dim);
    for (int64_t i = 0; i < n; ++i) read_obs(obs, s.obs_kind, i, dim, act_x.data() + i * dim);
    act_h.resize(s.n_layers);
    for (int64_t l = 0; l < s.n_layers; ++l) act_h[l].resize(n * s.sizes[l + 1]);
    forward(s.params, act_x.data(), n, act_h);
    const float* out = act_h.back().data();
    for (int64_t i = 0; i < n; ++i) {
      float* qi = q + i * n_actions;
      q_row(out + i * n_out, n_actions, qi);
      if (!uniforms) continue;
      int64_t a = 0;
      if (uniforms[i] < eps) {
        const float u = uniforms[n + i];  // in [0, 1); anything else (NaN too) stays in range
        if (u > 0.0f)
          a = std::min(static_cast<int64_t>(std::min(u, 1.0f) * static_cast<float>(n_actions)),
                       n_actions - 1);
      } else {
        for (int64_t j = 1; j < n_actions; ++j)
          if (qi[j] > qi[a]) a = j;
      }
      actions[i] = a;
    }
  }

  void clip_adam(bool soft) {
    const int64_t n = n_params();
    float* g = s.grad;
    float scale = 1.0f;
    if (s.max_norm > 0)
      scale = std::min(1.0f, static_cast<float>(s.max_norm) / (std::sqrt(dot(g, g, n)) + 1e-6f));
    s.step_count[0] += 1.0f;
    const double t = s.step_count[0];
    const float step_size = static_cast<float>(s.lr / (1.0 - std::pow(s.beta1, t)));
    const float bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(s.beta2, t)));
    const float w1 = static_cast<float>(1.0 - s.beta1), w2 = static_cast<float>(1.0 - s.beta2);
    const float b2 = static_cast<float>(s.beta2), eps = static_cast<float>(s.eps);
    const float tau = static_cast<float>(s.tau);
    float *p = s.params, *m = s.exp_avg, *v = s.exp_avg_sq, *tg = s.target;
    for (int64_t i = 0; i < n; ++i) {
      const float gi = g[i] * scale;
      g[i] = gi;
      const float mi = m[i] + w1 * (gi - m[i]);
      const float vi = b2 * v[i] + w2 * gi * gi;
      m[i] = mi;
      v[i] = vi;
      const float pi = p[i] - step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps);
      p[i] = pi;
      if (soft) tg[i] += tau * (pi - tg[i]);
    }
  }

  void update_target() {
    const int64_t n = n_params();
    if (s.tau >= 1.0) {
      std::memcpy(s.target, s.params, n * sizeof(float));
      return;
    }
    const float tau = static_cast<float>(s.tau);
    for (int64_t i = 0; i < n; ++i) s.target[i] += tau * (s.params[i] - s.target[i]);
  }

  // One step on gathered rows; `steps` counts learner steps before it (for a hard target's
  // period).
  void step(const Rows& in, const float* weights, float* td_abs, double* stats, int64_t steps) {
    const int64_t b = s.batch;
    forward(s.params, in.x, s.double_dqn ? 2 * b : b, h);
    forward(s.target, in.x + b * s.sizes[0], b, ht);
    const int64_t last = s.n_layers - 1;
    td_grad(in, weights, s.grad + w_off(last) + s.sizes[last] * s.sizes[last + 1], td_abs, stats);
    backward(in.x);
    const bool soft = s.interval == 1 && s.tau < 1.0;
    clip_adam(soft);
    if (!soft && (steps + 1) % s.interval == 0) update_target();
  }

  void mark_copied() {
    if (!w) return;  // the block runs on the caller's thread
    {
      std::lock_guard<std::mutex> lock(w->mu);
      w->copied = true;
    }
    w->cv.notify_all();
  }

  // The block: step j's rows are gathered after step j - 1 (whose compute hid their prefetch);
  // the rows are released to the caller once the last step's are copied, or at a refused row.
  void run_block() {
    const int64_t b = s.batch;
    const int64_t* idx = block_idx.data();
    const Rows in = gathered();
    block_done = block_k;
    if (block_k > 0) prefetch(idx);
    for (int64_t j = 0; j < block_k; ++j) {
      const bool ok = gather(idx + j * b, block_rows, in);
      if (!ok) block_done = j;
      if (!ok || j + 1 == block_k) mark_copied();
      if (!ok) return;  // this step and the ones after it change nothing
      if (j + 1 < block_k) prefetch(idx + (j + 1) * b);
      step(in, nullptr, block_td, block_stats, block_steps + j);
    }
    if (block_k == 0) mark_copied();
  }

  // The worker yields its core to the loop's short bursts (acting, sending actions, storing
  // transitions): SCHED_BATCH (it never preempts a thread it wakes beside) and nice +5. On two
  // cores the loop, the env worker and this thread take turns, and a loop that waits for a
  // core holds up the envs.
  static void yield_to_the_loop() {
#if defined(__linux__)
    pthread_setname_np(pthread_self(), "fastdqn-learner");  // as `top -H` and /proc show it
    sched_param none{};
    sched_setscheduler(0, SCHED_BATCH, &none);
    const pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
    setpriority(PRIO_PROCESS, tid, getpriority(PRIO_PROCESS, tid) + 5);
#endif
  }

  void serve(Worker* wk) {
    if (omp_set_num_threads) omp_set_num_threads(1);  // see fdqn_steps_many
    yield_to_the_loop();
    std::unique_lock<std::mutex> lock(wk->mu);
    for (;;) {
      wk->cv.wait(lock, [wk] { return wk->running || wk->quit; });
      if (wk->quit) return;
      lock.unlock();
      run_block();
      lock.lock();
      wk->running = false;
      wk->cv.notify_all();
    }
  }

  // Waits until the block in flight has copied all its rows (at once if none is in flight).
  void wait_copied() {
    if (!w) return;
    std::unique_lock<std::mutex> lock(w->mu);
    w->cv.wait(lock, [this] { return w->copied; });
  }

  // Hands the block to the worker (started on first use); false if no thread could start (the
  // caller then runs the block itself).
  bool launch() {
    if (!w) {
      try {
        auto wk = std::make_unique<Worker>();
        wk->pid = static_cast<int64_t>(getpid());
        wk->thread = std::thread(&Step::serve, this, wk.get());
        w = std::move(wk);
      } catch (...) {
        return false;
      }
    }
    {
      std::lock_guard<std::mutex> lock(w->mu);
      w->running = true;
      w->copied = false;
    }
    w->cv.notify_all();
    return true;
  }

  // Waits for the detached block, if one runs; returns the steps it ran (-1: none was started).
  int64_t join() {
    if (!pending) return -1;
    if (w) {
      std::unique_lock<std::mutex> lock(w->mu);
      w->cv.wait(lock, [this] { return !w->running; });
    }
    pending = false;
    return block_done;
  }

  // Waits for the block in flight, then ends the worker thread (the next block starts another).
  // In a process forked from the one that started it the thread does not exist, and its mutex
  // and condition variable may be held or waited on by it: all of them are dropped untouched
  // (joining, or destroying the condition variable, would wait forever).
  void stop() {
    if (!w) return;
    if (static_cast<int64_t>(getpid()) != w->pid) {
      w.release();
      pending = false;
      return;
    }
    join();
    {
      std::lock_guard<std::mutex> lock(w->mu);
      w->quit = true;
    }
    w->cv.notify_all();
    w->thread.join();
    w.reset();
  }

  ~Step() { stop(); }  // a block in flight writes the learner's tensors: never outlive it
};

// Whether this build can run `s`: every dimension fits the int that sgemm_ takes (rows are up
// to 2B), the parameter count fits int64, and the learner's tensors are given.
bool valid(const Spec& s) {
  constexpr int64_t kInt = std::numeric_limits<int>::max();
  if (s.abi != kAbi || s.n_layers < 1 || s.n_layers > kMaxLayers || s.batch < 1 ||
      s.batch > kInt / 2 || s.interval < 1 || s.obs_kind < kFloat32 || s.obs_kind > kFloat64 ||
      s.capacity < 0)
    return false;
  if (!s.params || !s.grad || !s.target || !s.exp_avg || !s.exp_avg_sq || !s.step_count)
    return false;
  if (s.capacity > 0 && (!s.obs || !s.next_obs || !s.actions || !s.rewards || !s.dones ||
                         !s.discounts))
    return false;
  int64_t total = 0;
  for (int64_t l = 0; l <= s.n_layers; ++l)
    if (s.sizes[l] < 1 || s.sizes[l] > kInt) return false;
  for (int64_t l = 0; l < s.n_layers; ++l)
    if (__builtin_add_overflow(total, s.sizes[l] * s.sizes[l + 1] + s.sizes[l + 1], &total))
      return false;
  return s.sizes[s.n_layers] > (s.dueling ? 1 : 0);
}

}  // namespace

extern "C" {

int64_t fdqn_abi(void) { return kAbi; }

// No exception crosses this C boundary (it would abort the Python process): each entry point
// catches them and returns null or an error code, which fastdqn/learners/native.py turns into a fallback
// or a Python exception.

// A step object for `spec`, or null when the spec is not one this build can run or its buffers
// cannot be allocated (a huge batch).
void* fdqn_create(const Spec* spec) {
  if (!spec || !valid(*spec)) return nullptr;
  try {
    return new Step(*spec);
  } catch (...) {
    return nullptr;
  }
}

void fdqn_destroy(void* step) { delete static_cast<Step*>(step); }

// Acting: Q-values of the n observations `obs` into q [n, n_actions] and, given `uniforms`
// [2, n], the epsilon-greedy actions into `actions` [n]. 0, or -1 for arguments it cannot take
// (n beyond sgemm_'s int), -2 when its scratch cannot be allocated.
int64_t fdqn_act(void* handle, const void* obs, int64_t n, const float* uniforms, float eps,
                 float* q, int64_t* actions) {
  if (!handle || n < 0 || n > std::numeric_limits<int>::max() || (n > 0 && (!obs || !q)) ||
      (uniforms && !actions))
    return -1;
  try {
    static_cast<Step*>(handle)->act(obs, n, uniforms, eps, q, actions);
  } catch (...) {
    return -2;
  }
  return 0;
}

// K steps on the [K, B] row indices `idx`, each below `rows` (the buffer's filled rows);
// `weights` [K, B] importance weights, or null; |TD error| of the last step's rows into
// td_abs [B]; stats += (loss, mean Q, 1) per step. Returns the steps it ran: k, or the index of
// the step that found a row index or a stored action out of range (that step and the ones after
// it change nothing); -1 for arguments it cannot take (an acting-only handle).
int64_t fdqn_steps(void* handle, const int64_t* idx, int64_t k, const float* weights,
                   float* td_abs, double* stats, int64_t steps, int64_t rows) {
  Step* st = static_cast<Step*>(handle);
  if (!st || st->s.capacity < 1 || k < 0 || (k > 0 && (!idx || !td_abs || !stats))) return -1;
  st->join();  // a detached block before it, if the caller did not wait for it
  rows = std::min(rows, st->s.capacity);
  const int64_t b = st->s.batch;
  const Rows in = st->gathered();
  if (k > 0) st->prefetch(idx);
  for (int64_t j = 0; j < k; ++j) {
    if (j + 1 < k) st->prefetch(idx + (j + 1) * b);
    if (!st->gather(idx + j * b, rows, in)) return j;  // this step changes nothing
    st->step(in, weights ? weights + j * b : nullptr, td_abs, stats, steps + j);
  }
  return k;
}

// fdqn_steps(handle, idx, k, null, td_abs, stats, steps, rows) detached: the steps run on a
// thread of the step's own while the caller goes on. The block reads the replay until
// fdqn_steps_copied returns: the caller writes no row before that. The learner's tensors, td_abs
// and stats belong to the block until fdqn_steps_wait, which returns what fdqn_steps would (the
// steps before the first refused row). Returns 0 when the block runs on its thread, 1 when no
// thread could start and it ran here, -1 for arguments it cannot take.
int64_t fdqn_steps_start(void* handle, const int64_t* idx, int64_t k, float* td_abs,
                         double* stats, int64_t steps, int64_t rows) {
  Step* st = static_cast<Step*>(handle);
  if (!st || st->s.capacity < 1 || k < 0 || (k > 0 && (!idx || !td_abs || !stats))) return -1;
  st->join();
  try {
    st->block_idx.assign(idx, idx + k * st->s.batch);
  } catch (...) {
    return -1;
  }
  st->block_k = k;
  st->block_steps = steps;
  st->block_rows = std::min(rows, st->s.capacity);
  st->block_td = td_abs;
  st->block_stats = stats;
  st->pending = true;
  if (st->launch()) return 0;
  st->run_block();
  return 1;
}

// Waits until the block in flight has copied the last of its rows out of the replay (at once
// if none is in flight): from then on the caller may write any row.
void fdqn_steps_copied(void* handle) {
  if (handle) static_cast<Step*>(handle)->wait_copied();
}

// Waits for the block in flight, if any, then ends the step's thread: a process that forks
// (env workers, the next run's) must have no thread of its own running.
void fdqn_steps_stop(void* handle) {
  if (handle) static_cast<Step*>(handle)->stop();
}

// Waits for the block fdqn_steps_start began; returns the steps it ran, or -1 if none was begun.
int64_t fdqn_steps_wait(void* handle) {
  Step* st = static_cast<Step*>(handle);
  return st ? st->join() : -1;
}

// The uniform steps of n learners in one call (a population's agents): learner i runs k[i]
// steps on idx[i] exactly as fdqn_steps(handles[i], idx[i], k[i], null, td_abs[i], stats[i],
// steps[i], rows[i]) would, and done[i] gets what that returns. Each learner's arithmetic is
// its own call's, in the same order on its own buffers, so the result equals n separate calls
// bit for bit, whichever thread runs it. With threads > 1 the learners are split into that many
// contiguous groups of about equal steps, each run on its own thread (sgemm_ is reentrant; no
// learner is touched by two threads); a thread that cannot start leaves its group to the
// caller's thread. Returns 0, or -1 for arguments it cannot take.
int64_t fdqn_steps_many(int64_t n, void* const* handles, const int64_t* const* idx,
                        const int64_t* k, float* const* td_abs, double* const* stats,
                        const int64_t* steps, const int64_t* rows, int64_t* done,
                        int64_t threads) {
  if (n < 0 || (n > 0 && (!handles || !idx || !k || !td_abs || !stats || !steps || !rows ||
                          !done)))
    return -1;
  auto run = [&](int64_t lo, int64_t hi) {
    // A new thread's BLAS would otherwise start its own OpenMP team (its default: one thread
    // per core) and fight the other groups for the cores: 1.6x slower, measured.
    if (omp_set_num_threads) omp_set_num_threads(1);
    for (int64_t i = lo; i < hi; ++i)
      done[i] = fdqn_steps(handles[i], idx[i], k[i], nullptr, td_abs[i], stats[i], steps[i],
                           rows[i]);
  };
  threads = std::max<int64_t>(1, std::min<int64_t>({threads, n, 256}));
  if (threads == 1) {
    run(0, n);
    return 0;
  }
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) total += std::max<int64_t>(k[i], 0) + 1;
  std::vector<int64_t> bounds{0};  // group g is learners bounds[g] .. bounds[g + 1] - 1
  int64_t acc = 0;
  for (int64_t i = 0; i < n && (int64_t)bounds.size() < threads; ++i) {
    acc += std::max<int64_t>(k[i], 0) + 1;
    if (acc * threads >= total * (int64_t)bounds.size()) bounds.push_back(i + 1);
  }
  if (bounds.back() != n) bounds.push_back(n);
  std::vector<std::thread> pool;
  size_t g = 1;
  for (; g + 1 < bounds.size(); ++g) {
    try {
      pool.emplace_back(run, bounds[g], bounds[g + 1]);
    } catch (...) {
      break;
    }
  }
  run(bounds[0], bounds[1]);
  for (; g + 1 < bounds.size(); ++g) run(bounds[g], bounds[g + 1]);
  for (auto& t : pool) t.join();
  return 0;
}

}  // extern "C"

// XLA:CPU custom call "cngpt_panel_matmul": out[M, N] = x[M, K] @ W[K, N], with W stored as column
// panels wp[P, K, 32] (P = ceil(N / 32); panel p holds columns 32p .. 32p + 31, zero past N).
//
// Why: at batch 8 XLA hands every weight product to Eigen, which repacks the whole weight on each
// call and streams it at ~14 GB/s on this project's 2-core machine; stored pre-packed, the weight is
// read once, in order, with a software prefetch ahead, at the memory's ~25 GB/s. The same kernel
// beats XLA's matrix-vector code at batch 1 (benchmarks/generation.py measures both).
//
// Operands (default row-major layouts): x [M, K] f32, wp [P, K, 32] f32. Result: [M, N] f32.
// Opaque (the custom call's backend_config): "M K N threads".
// Built and loaded by cngpt_tf/native.py; needs AVX-512F.
#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "xla/service/custom_call_target_registry.h"

namespace {

constexpr int kPanel = 32;        // columns per panel: two 16-float AVX-512 registers
constexpr int kRows = 8;          // rows of x per pass over a panel: 16 accumulators
constexpr int kPrefetch = 1024;   // floats ahead (4 KiB, 32 k-steps) to prefetch the panel stream

// out[r, 0:cols] = x[r, :] @ panel for r < R; panel [K, 32], x rows K apart, out rows N apart.
template <int R>
void panel_tile(const float* x, int K, const float* panel, float* out, int N, int cols) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int k = 0; k < K; ++k) {
    const float* w = panel + k * kPanel;
    // Past the panel's end this prefetches the next panel (or harmless bytes: prefetches never fault).
    _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetch), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetch + 16), _MM_HINT_T0);
    const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 xr = _mm512_set1_ps(x[r * K + k]);
      acc[r][0] = _mm512_fmadd_ps(w0, xr, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(w1, xr, acc[r][1]);
    }
  }
  const __mmask16 lo = cols >= 16 ? 0xFFFF : (1u << cols) - 1;
  const __mmask16 hi = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : (1u << (cols - 16)) - 1;
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(out + r * N, lo, acc[r][0]);
    _mm512_mask_storeu_ps(out + r * N + 16, hi, acc[r][1]);
  }
}

// Panels [p0, p1) of the product; each panel is read from memory once and reused from cache for
// every further 8 rows of x.
void panels(const float* x, int M, int K, const float* wp, float* out, int N, int p0, int p1) {
  for (int p = p0; p < p1; ++p) {
    const float* panel = wp + static_cast<size_t>(p) * K * kPanel;
    const int cols = N - p * kPanel < kPanel ? N - p * kPanel : kPanel;
    for (int m = 0; m < M; m += kRows) {
      const float* xm = x + static_cast<size_t>(m) * K;
      float* om = out + static_cast<size_t>(m) * N + p * kPanel;
      switch (M - m < kRows ? M - m : kRows) {
        case 1: panel_tile<1>(xm, K, panel, om, N, cols); break;
        case 2: panel_tile<2>(xm, K, panel, om, N, cols); break;
        case 3: panel_tile<3>(xm, K, panel, om, N, cols); break;
        case 4: panel_tile<4>(xm, K, panel, om, N, cols); break;
        case 5: panel_tile<5>(xm, K, panel, om, N, cols); break;
        case 6: panel_tile<6>(xm, K, panel, om, N, cols); break;
        case 7: panel_tile<7>(xm, K, panel, om, N, cols); break;
        default: panel_tile<8>(xm, K, panel, om, N, cols); break;
      }
    }
  }
}

// The calling thread plus `threads - 1` workers. Workers spin for 50 us after each call (a decode
// step issues the next product within microseconds), then sleep. One caller at a time: a second,
// concurrent caller (another XLA execution) computes on its own thread instead of waiting.
class Pool {
 public:
  template <class Work>  // work(t, n): this thread's share t of n
  bool run(int threads, Work&& work) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (threads <= 1 || !busy.owns_lock()) return false;
    grow(threads - 1);
    job_ = [&](int t) { work(t, threads); };
    active_ = threads - 1;
    pending_.store(threads - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(wake_mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    work(0, threads);
    while (pending_.load(std::memory_order_acquire) != 0) _mm_pause();
    return true;
  }

 private:
  void grow(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      const int id = static_cast<int>(workers_.size()) + 1;
      const unsigned long seen = generation_.load();  // read before run() publishes this call's job
      workers_.emplace_back([this, id, seen] { loop(id, seen); });
      workers_.back().detach();
    }
  }

  void loop(int id, unsigned long seen) {
    for (;;) {
      const auto start = std::chrono::steady_clock::now();
      for (int spins = 1; generation_.load(std::memory_order_acquire) == seen; ++spins) {
        _mm_pause();
        if (spins % 64 == 0 && std::chrono::steady_clock::now() - start > std::chrono::microseconds(50)) {
          std::unique_lock<std::mutex> lock(wake_mutex_);
          wake_.wait(lock, [&] { return generation_.load() != seen; });
        }
      }
      seen = generation_.load(std::memory_order_acquire);
      if (id <= active_) {
        job_(id);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  std::mutex busy_, wake_mutex_;
  std::condition_variable wake_;
  std::vector<std::thread> workers_;
  std::atomic<unsigned long> generation_{0};
  std::atomic<int> pending_{0};
  int active_ = 0;
  std::function<void(int)> job_;
};

Pool& pool = *new Pool;  // never destroyed: its sleeping workers outlive the exit handlers

}  // namespace

extern "C" void cngpt_panel_matmul(void* out, const void** in, const char* opaque, size_t, void*) {
  int M = 0, K = 0, N = 0, threads = 1;
  std::sscanf(opaque, "%d %d %d %d", &M, &K, &N, &threads);
  const float* x = static_cast<const float*>(in[0]);
  const float* wp = static_cast<const float*>(in[1]);
  float* result = static_cast<float*>(out);
  const int n_panels = (N + kPanel - 1) / kPanel;
  auto work = [&](int t, int n) {  // contiguous runs of panels, one per thread
    panels(x, M, K, wp, result, N, n_panels * t / n, n_panels * (t + 1) / n);
  };
  if (!pool.run(threads, work)) work(0, 1);
}

static const bool registered = [] {
  xla::CustomCallTargetRegistry::Global()->Register(
      "cngpt_panel_matmul", reinterpret_cast<void*>(&cngpt_panel_matmul), "Host");
  return true;
}();

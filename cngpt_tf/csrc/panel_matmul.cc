// XLA:CPU custom calls: "cngpt_panel_matmul" (below) and "cngpt_decode_attention" (at the end).
//
// "cngpt_panel_matmul": out[M, N] = x[M, K] @ W[K, N], with W stored as column
// panels (P = ceil(N / 32); panel p holds columns 32p .. 32p + 31, zero past N) in float32,
// bfloat16 or int8 with scales (the layouts: panel_job.h).
//
// Why: at batch 8 XLA hands every weight product to Eigen, which repacks the whole weight on each
// call and streams it at ~14 GB/s on this project's 2-core machine; stored pre-packed, the weight is
// read once, in order, with a software prefetch ahead, at the memory's speed. Batch 1 is bound by the
// bytes read per token: bf16 reads half of fp32's, int8 a quarter (plus its scales).
//
// Operands (default row-major layouts): x [M, K] f32, the panels, and for int8 the scales; or, for
// a loop over the layers (L > 0 below), x, the layer index s32[1], the panels of each of the L
// layers, and for int8 the scales of each. Result: [M, N] f32.
// Opaque (the custom call's backend_config): "M K N threads isa mode group L", where isa is avx2,
// avx512, avx512bf16, avx512vnni or amxbf16 (the kernel file to run: kernels_<isa>.cc; avx512bf16
// and amxbf16 differ from avx512 only for bf16 weights, avx512vnni only for int8), mode is fp32, bf16 or int8, group
// is int8's rows per scale block, and L the number of layers to pick from (0: one weight).
// Only "M K N threads" is required: the defaults are AVX-512F (AVX2 where the CPU lacks it), fp32, 0, 0.
// This file is built without ISA flags, so that loading it is safe on any x86-64 CPU; the kernels
// run only for ISAs the CPU reports (a weaker one is used otherwise). Built and loaded by
// cngpt_tf/native.py.
#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <thread>
#include <vector>

#include "panel_job.h"
#include "xla/service/custom_call_target_registry.h"

// The kernels of cngpt_tf.native.OPTIONAL_ISAS are missing from a library built by a compiler too old
// for their flags: weak references, null there, and cpu_isas() leaves those ISAs out.
#pragma weak cngpt_panels_avx512bf16
#pragma weak cngpt_bf16_pairs
#pragma weak cngpt_panels_avx512vnni
#pragma weak cngpt_int8_rows
#pragma weak cngpt_panels_amxbf16

namespace {

enum IsaBit { kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 4, kAvx512Vnni = 8, kAmxBf16 = 16 };

// Linux lets a process use AMX's tile data (8 KiB of register state a thread) once it asks; a Linux
// that refuses (or predates AMX: before 5.16) answers non-zero, and the tiles stay unused.
bool tiles_permitted() {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // ARCH_REQ_XCOMP_PERM, XTILEDATA
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

int cpu_isas() {
  static const int isas = [] {
    __builtin_cpu_init();
    int bits = 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) bits |= kAvx2;
    if (__builtin_cpu_supports("avx512f")) bits |= kAvx512;
    if ((bits & kAvx512) && __builtin_cpu_supports("avx512bf16") && cngpt_panels_avx512bf16 && cngpt_bf16_pairs)
      bits |= kAvx512Bf16;
    if ((bits & kAvx512) && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni") &&
        __builtin_cpu_supports("avx512vbmi") && cngpt_panels_avx512vnni && cngpt_int8_rows)
      bits |= kAvx512Vnni;
    if ((bits & kAvx512Bf16) && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
        cngpt_panels_amxbf16 && tiles_permitted())
      bits |= kAmxBf16;
    return bits;
  }();
  return isas;
}

// The ISA named in the opaque, or the best one the CPU has; never one the CPU lacks.
int choose_isa(const char* name) {
  int isa = std::strcmp(name, "avx2") == 0         ? kAvx2
            : std::strcmp(name, "avx512") == 0     ? kAvx512
            : std::strcmp(name, "avx512bf16") == 0 ? kAvx512Bf16
            : std::strcmp(name, "avx512vnni") == 0 ? kAvx512Vnni
            : std::strcmp(name, "amxbf16") == 0    ? kAmxBf16
                                                   : kAvx512;  // none named
  while (isa && !(cpu_isas() & isa)) isa >>= 1;  // AMX, VNNI, BF16 and AVX-512F's kernels share the rest
  return isa;
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
    // Wait for the workers; on a machine busier than its cores a worker may be waiting for a core
    // itself, so after ~20 us of spinning give the core away between checks.
    for (int spins = 1; pending_.load(std::memory_order_acquire) != 0; ++spins) {
      _mm_pause();
        if (spins > 256) std::this_thread::yield();
    }
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

// XLA:CPU hands a custom call with one (non-tuple) result that result's buffer as `out` -- except
// when the program was read back from XLA's persistent compilation cache: TF 2.21's deserialiser
// (custom_call_thunk_serdes.cc) leaves CustomCallThunk::OpBuffers::is_tuple_result uninitialised,
// and where that garbage reads as true, `out` is the address of an array of result pointers on the
// calling thread's stack instead (writing the result there smashed the stack: a SIGSEGV). Result
// buffers never live on a thread's stack, so an `out` inside this thread's stack is that array.
void* result_buffer(void* out) {
  struct Stack {
    uintptr_t low = 0, size = 0;
    Stack() {  // once a thread: for the main thread glibc reads /proc/self/maps to answer
      pthread_attr_t attr;
      void* base = nullptr;
      size_t bytes = 0;
      if (pthread_getattr_np(pthread_self(), &attr) != 0) return;
      if (pthread_attr_getstack(&attr, &base, &bytes) == 0) low = reinterpret_cast<uintptr_t>(base), size = bytes;
      pthread_attr_destroy(&attr);
    }
  };
  thread_local const Stack stack;
  const auto at = reinterpret_cast<uintptr_t>(out);
  return at - stack.low < stack.size ? *static_cast<void**>(out) : out;  // unsigned: below low wraps
}

// A call on a CPU without AVX2 + FMA (cngpt_tf.native never emits one there): a NaN result and a line.
void no_kernel(const char* call, float* out, size_t count) {
  std::fprintf(stderr, "%s: this CPU lacks AVX2 + FMA; the result is NaN\n", call);
  for (size_t i = 0; i < count; ++i) out[i] = __builtin_nanf("");
}

}  // namespace

extern "C" {

// The ISAs this CPU runs, as bits: 1 AVX2 + FMA, 2 AVX-512F, 4 AVX512-BF16, 8 AVX512-VNNI with BW
// and VBMI, 16 AMX-BF16 with AVX512-BF16 and the OS's leave to use the tiles (cngpt_tf.native asks).
int cngpt_native_isas() { return cpu_isas(); }

void cngpt_panel_matmul(void* out, const void** in, const char* opaque, size_t, void*) {
  int M = 0, K = 0, N = 0, threads = 1, group = 0, layers = 0;
  char isa_name[16] = "", mode_name[16] = "fp32";
  std::sscanf(opaque, "%d %d %d %d %15s %15s %d %d", &M, &K, &N, &threads, isa_name, mode_name, &group, &layers);
  PanelJob job{};
  job.x = static_cast<const float*>(in[0]);
  job.M = M, job.K = K, job.N = N, job.group = group;
  job.mode = std::strcmp(mode_name, "bf16") == 0 ? kBf16 : std::strcmp(mode_name, "int8") == 0 ? kInt8 : kFp32;
  // The panels at in[1] and the scales after them; or, in a loop over the layers, the layer index at
  // in[1], then every layer's panels, then (int8) every layer's scales: the index picks one of each.
  int panels = 1, count = 1;
  if (layers > 0) {
    const int at = *static_cast<const int32_t*>(in[1]);
    panels = 2 + (at < 0 ? 0 : at >= layers ? layers - 1 : at), count = layers;
  }
  job.w = in[panels];
  if (job.mode == kInt8) job.scales = static_cast<const float*>(in[panels + count]);
  job.out = static_cast<float*>(result_buffer(out));
  if (job.mode == kInt8 && job.group <= 0) job.group = K;
  int isa = choose_isa(isa_name);
  // int32 sums of a block must not overflow: group * 255 * 128 < 2**31
  const bool vnni_fits = job.mode == kInt8 && job.group <= (1 << 16);
  const bool bf16_dot = isa == kAvx512Bf16 || isa == kAmxBf16;
  if ((bf16_dot && job.mode != kBf16) || (isa == kAvx512Vnni && !vnni_fits))
    isa = kAvx512;  // the same kernels as AVX-512F
  void (*kernel)(const PanelJob*, int, int) = isa == kAmxBf16      ? cngpt_panels_amxbf16
                                              : isa == kAvx512Vnni ? cngpt_panels_avx512vnni
                                              : isa == kAvx512Bf16 ? cngpt_panels_avx512bf16
                                              : isa == kAvx512   ? cngpt_panels_avx512
                                              : isa == kAvx2     ? cngpt_panels_avx2
                                                                 : nullptr;
  if (kernel == nullptr) return no_kernel("cngpt_panel_matmul", job.out, static_cast<size_t>(M) * N);
  if (isa == kAvx512Bf16 || isa == kAmxBf16) {  // x rounded to bf16 once, shared by every thread
    thread_local std::vector<uint32_t> pairs;
    pairs.resize(static_cast<size_t>(M) * ((K + 1) / 2));
    cngpt_bf16_pairs(job.x, M, K, pairs.data());
    job.x_pairs = pairs.data();
  }
  if (isa == kAvx512Vnni) {  // x quantised once, shared by every thread
    const size_t blocks = (K + job.group - 1) / job.group, group4 = (job.group + 3) / 4 * 4;
    thread_local std::vector<int8_t> q;
    thread_local std::vector<float> scales;
    thread_local std::vector<int32_t> offsets;
    q.resize(M * blocks * group4);
    scales.resize(M * blocks);
    offsets.resize(M * blocks);
    cngpt_int8_rows(job.x, M, K, job.group, q.data(), scales.data(), offsets.data());
    job.x_int8 = q.data(), job.x_scales = scales.data(), job.x_offsets = offsets.data();
  }
  const int n_panels = (N + kPanel - 1) / kPanel;
  auto work = [&](int t, int n) {  // contiguous runs of panels, one per thread
    kernel(&job, n_panels * t / n, n_panels * (t + 1) / n);
  };
  if (!pool.run(threads, work)) work(0, 1);
}

// XLA:CPU custom call "cngpt_decode_attention": one decode step's attention over the K/V cache
// (decode_attention.h). Operands: q [BH, D] f32, keys and values [BH, S, D] f32 (the cache with
// this step's K/V written in; or every layer's, [L, BH, S, D]), key_mask [B, S] s32, [n, layer] s32
// (n: slots in use, the step's slot + 1; layer: which of the L layers' caches to read).
// Result: [BH, D] f32. Opaque: "BH S D H threads isa scale L" (scale exact: %.9g or Python's repr).
void cngpt_decode_attention(void* out, const void** in, const char* opaque, size_t, void*) {
  AttentionJob job{};
  int threads = 1, layers = 1;
  char isa_name[16] = "";
  std::sscanf(opaque, "%d %d %d %d %d %15s %f %d", &job.BH, &job.S, &job.D, &job.H, &threads, isa_name, &job.scale,
              &layers);
  const int32_t* n_layer = static_cast<const int32_t*>(in[4]);
  const int n = n_layer[0], at = layers > 1 ? n_layer[1] : 0;
  const size_t layer = at < 0 ? 0 : at >= layers ? layers - 1 : at;
  const size_t cache_floats = static_cast<size_t>(job.BH) * job.S * job.D;  // one layer's keys
  job.q = static_cast<const float*>(in[0]);
  job.keys = static_cast<const float*>(in[1]) + layer * cache_floats;
  job.values = static_cast<const float*>(in[2]) + layer * cache_floats;
  job.key_mask = static_cast<const int32_t*>(in[3]);
  job.n = n < 0 ? 0 : n > job.S ? job.S : n;  // a slot index past the cache reads no further
  job.out = static_cast<float*>(result_buffer(out));
  const int isa = choose_isa(isa_name);
  void (*kernel)(const AttentionJob*, int, int) = isa >= kAvx512 ? cngpt_attention_avx512
                                                  : isa == kAvx2 ? cngpt_attention_avx2
                                                                 : nullptr;
  if (kernel == nullptr) return no_kernel("cngpt_decode_attention", job.out, static_cast<size_t>(job.BH) * job.D);
  auto work = [&](int t, int parts) { kernel(&job, job.BH * t / parts, job.BH * (t + 1) / parts); };
  if (job.BH < 2 || !pool.run(threads, work)) work(0, 1);
}

}  // extern "C"

static const bool registered = [] {
  auto* registry = xla::CustomCallTargetRegistry::Global();
  registry->Register("cngpt_panel_matmul", reinterpret_cast<void*>(&cngpt_panel_matmul), "Host");
  registry->Register("cngpt_decode_attention", reinterpret_cast<void*>(&cngpt_decode_attention), "Host");
  return true;
}();

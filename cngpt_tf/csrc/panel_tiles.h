// The panel product's inner loops, written once over an ISA's vector type: each kernels_<isa>.cc
// defines `struct Isa` (below) and includes this file, so every ISA runs the same loops.
//
// struct Isa {
//   using F = <float vector>;  static constexpr int L;  // floats per vector
//   static constexpr int kVecs;                         // vectors per tile row: a tile is L * kVecs columns
//   static constexpr int kMaxRows, kMaxRowsBf16, kMaxRowsInt8;  // rows of x per tile, to fit the registers
//   zero(), load(const float*), set1(float), fma(a, b, c) = a * b + c, mul(a, b), add(a, b), store(float*, F),
//   pair(const uint16_t* p, F& even, F& odd): L bf16 column pairs (2L values) -> rows k and k + 1,
//   int8(const int8_t* p): L int8 values -> float
// };
//
// A tile is R rows of x times L * kVecs columns of one panel; its accumulators stay in registers
// for the whole K loop (each output is one float32 sum over k = 0, 1, ..., K - 1, in that order)
// and the panel is streamed once per tile with a software prefetch ahead. Each panel is read from
// memory once: further tiles of the same panel (more rows of x, the other columns) hit the cache.
// Everything sits in an anonymous namespace: each kernel file gets its own copy, compiled for its ISA.
#ifndef CNGPT_TF_PANEL_TILES_H_
#define CNGPT_TF_PANEL_TILES_H_

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "panel_job.h"

// Before every loop over a tile's rows, columns or chains: unrolled early, each accumulator array
// element becomes a register of its own. Without it GCC 12 kept the arrays in memory too and stored
// every accumulator to the stack on each pass of the K loop (objdump of kernels_avx512.o: 1351 zmm
// stack references, none left in the inner loops with it).
#define CNGPT_UNROLL _Pragma("GCC unroll 16")

namespace {

constexpr int kAhead = 4096;     // bytes ahead in a panel's stream to prefetch into L1 (32 fp32 rows)
constexpr int kAheadL2 = 16384;  // and further ahead into L2 only

struct TileArgs {
  const float* x;         // the tile's first row of x; rows K apart
  const uint32_t* pairs;  // bf16 dot products: the same rows as bf16 pairs, K2 apart
  int K, K2;              // K2 = ceil(K / 2)
  const void* panel;      // this panel's weights
  const float* scales;    // int8: this panel's scales [ceil(K / group), 32]
  int group;
  int c0;                 // the tile's first column within the panel
  float* out;             // the tile's first output; rows N apart
  int N, cols;            // cols: how many of the tile's columns exist (< L * kVecs in the last panel)
};

// Prefetch the 128-byte stretches of the stream kAhead bytes on (into L1) and kAheadL2 bytes on
// (into L2): both cache lines of each. One prefetch distance alone leaves the read below the memory's
// speed: the L1 misses in flight per core are few (its fill buffers), and the L2 prefetch keeps more
// lines on their way. Measured on Intel SPR-class, 2 threads, one decode step's products at batch 1:
// bf16 ~21 -> ~25.5 GB/s, fp32 ~23 -> ~27 (without any prefetch: ~13). Past the panel's end this
// reaches into the next panel (or harmless bytes: prefetches never fault).
inline void prefetch_ahead(const void* at) {
  const char* p = static_cast<const char*>(at) + kAhead;
  _mm_prefetch(p, _MM_HINT_T0);
  _mm_prefetch(p + 64, _MM_HINT_T0);
  const char* far = static_cast<const char*>(at) + kAheadL2;
  _mm_prefetch(far, _MM_HINT_T1);
  _mm_prefetch(far + 64, _MM_HINT_T1);
}

template <class I, int R>
inline void store_tile(typename I::F (&acc)[R][I::kVecs], const TileArgs& a) {
  constexpr int kWidth = I::L * I::kVecs;
  CNGPT_UNROLL
  for (int r = 0; r < R; ++r) {
    float* o = a.out + static_cast<size_t>(r) * a.N;
    if (a.cols >= kWidth) {
      CNGPT_UNROLL
      for (int c = 0; c < I::kVecs; ++c) I::store(o + c * I::L, acc[r][c]);
    } else {  // the last panel's part-filled tile: only `cols` columns exist in out
      alignas(64) float tmp[kWidth];
      CNGPT_UNROLL
      for (int c = 0; c < I::kVecs; ++c) I::store(tmp + c * I::L, acc[r][c]);
      for (int j = 0; j < a.cols; ++j) o[j] = tmp[j];
    }
  }
}

// AVX-512's store masks of a 32-column panel's two 16-column halves when only `cols` columns exist.
struct HalfMasks {
  uint16_t lo, hi;
};
inline HalfMasks half_masks(int cols) {
  return {static_cast<uint16_t>(cols >= 16 ? 0xFFFF : (1u << cols) - 1),
          static_cast<uint16_t>(cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : (1u << (cols - 16)) - 1)};
}

template <class I, int R>
inline void zero_tile(typename I::F (&acc)[R][I::kVecs]) {
  CNGPT_UNROLL
  for (int r = 0; r < R; ++r)
    CNGPT_UNROLL
    for (int c = 0; c < I::kVecs; ++c) acc[r][c] = I::zero();
}

// fp32 panels [K, 32]: out += x[:, k] * W[k, :] for each k.
template <class I, int R>
struct Fp32Tile {
  static void run(const TileArgs& a) {
    typename I::F acc[R][I::kVecs];
    zero_tile<I, R>(acc);
    const float* panel = static_cast<const float*>(a.panel);
    for (int k = 0; k < a.K; ++k) {
      const float* w = panel + static_cast<size_t>(k) * kPanel;
      prefetch_ahead(w);
      typename I::F wv[I::kVecs];
      CNGPT_UNROLL
      for (int c = 0; c < I::kVecs; ++c) wv[c] = I::load(w + a.c0 + c * I::L);
      CNGPT_UNROLL
      for (int r = 0; r < R; ++r) {
        const typename I::F xr = I::set1(a.x[r * a.K + k]);
        CNGPT_UNROLL
        for (int c = 0; c < I::kVecs; ++c) acc[r][c] = I::fma(wv[c], xr, acc[r][c]);
      }
    }
    store_tile<I, R>(acc, a);
  }
};

// The accumulators of chain 0 += those of the other chains (small tiles keep several independent
// sums, so that each FMA need not wait for the previous one's result).
template <class I, int C, int R>
inline void fold_chains(typename I::F (&acc)[C][R][I::kVecs]) {
  CNGPT_UNROLL
  for (int chain = 1; chain < C; ++chain)
    CNGPT_UNROLL
    for (int r = 0; r < R; ++r)
      CNGPT_UNROLL
      for (int c = 0; c < I::kVecs; ++c) acc[0][r][c] = I::add(acc[0][r][c], acc[chain][r][c]);
}

// bf16 panels [K2, 32, 2], widened to float32 in registers (a bf16 is the top half of a float32).
// Tiles of 1-2 rows sum the even and the odd rows apart (two chains), then add the two.
template <class I, int R>
struct Bf16Tile {
  static constexpr int C = R <= 2 ? 2 : 1;
  static void run(const TileArgs& a) {
    typename I::F acc[C][R][I::kVecs];
    CNGPT_UNROLL
    for (int chain = 0; chain < C; ++chain) zero_tile<I, R>(acc[chain]);
    const uint16_t* panel = static_cast<const uint16_t*>(a.panel);
    const int whole = a.K / 2;  // pairs with both rows in x
    for (int kk = 0; kk < whole; ++kk) {
      const uint16_t* w = panel + static_cast<size_t>(kk) * 2 * kPanel;
      prefetch_ahead(w);
      typename I::F even[I::kVecs], odd[I::kVecs];
      CNGPT_UNROLL
      for (int c = 0; c < I::kVecs; ++c) I::pair(w + 2 * (a.c0 + c * I::L), even[c], odd[c]);
      CNGPT_UNROLL
      for (int r = 0; r < R; ++r) {
        const typename I::F x0 = I::set1(a.x[r * a.K + 2 * kk]), x1 = I::set1(a.x[r * a.K + 2 * kk + 1]);
        CNGPT_UNROLL
        for (int c = 0; c < I::kVecs; ++c) acc[0][r][c] = I::fma(even[c], x0, acc[0][r][c]);
        CNGPT_UNROLL
        for (int c = 0; c < I::kVecs; ++c) acc[C - 1][r][c] = I::fma(odd[c], x1, acc[C - 1][r][c]);
      }
    }
    if (a.K % 2) {  // odd K: the last pair's second row is padding, and x has no column for it
      const uint16_t* w = panel + static_cast<size_t>(whole) * 2 * kPanel;
      typename I::F even[I::kVecs], odd[I::kVecs];
      CNGPT_UNROLL
      for (int c = 0; c < I::kVecs; ++c) I::pair(w + 2 * (a.c0 + c * I::L), even[c], odd[c]);
      CNGPT_UNROLL
      for (int r = 0; r < R; ++r) {
        const typename I::F x0 = I::set1(a.x[r * a.K + a.K - 1]);
        CNGPT_UNROLL
        for (int c = 0; c < I::kVecs; ++c) acc[0][r][c] = I::fma(even[c], x0, acc[0][r][c]);
      }
    }
    fold_chains<I, C, R>(acc);
    store_tile<I, R>(acc[0], a);
  }
};

// int8 panels [K, 32] with scales per (block of `group` rows, column), widened to float32 in
// registers. Tiles of 3+ rows multiply each weight by its scale (exactly NumPy's float32(q) * scale)
// and accumulate x * w. A panel's row is only 32 bytes, so tiles of 1-2 rows are bound by the
// instructions per row, not by memory: they sum x * q over each block in 4 or 2 chains (rows k,
// k + 1, ... to chains 0, 1, ... in turn: each FMA need not wait for the previous one), then add
// the block's sum times its scale: no multiply per row.
template <class I, int R>
struct Int8Tile {
  using F = typename I::F;
  static constexpr int C = R == 1 ? 4 : R == 2 ? 2 : 1;

  static void row(const TileArgs& a, const int8_t* q, const F (&s)[I::kVecs], int k, F (&acc)[R][I::kVecs]) {
    F wv[I::kVecs];
    CNGPT_UNROLL
    for (int c = 0; c < I::kVecs; ++c) wv[c] = C == 1 ? I::mul(I::int8(q + a.c0 + c * I::L), s[c]) : I::int8(q + a.c0 + c * I::L);
    CNGPT_UNROLL
    for (int r = 0; r < R; ++r) {
      const F xr = I::set1(a.x[r * a.K + k]);
      CNGPT_UNROLL
      for (int c = 0; c < I::kVecs; ++c) acc[r][c] = I::fma(wv[c], xr, acc[r][c]);
    }
  }

  static void run(const TileArgs& a) {
    F total[R][I::kVecs];  // C > 1: the scaled sums of the blocks done; C == 1: the sum itself
    zero_tile<I, R>(total);
    const int8_t* panel = static_cast<const int8_t*>(a.panel);
    for (int k0 = 0, b = 0; k0 < a.K; k0 += a.group, ++b) {
      F s[I::kVecs];
      CNGPT_UNROLL
      for (int c = 0; c < I::kVecs; ++c) s[c] = I::load(a.scales + b * kPanel + a.c0 + c * I::L);
      const int k1 = k0 + a.group < a.K ? k0 + a.group : a.K;
      if constexpr (C == 1) {
        for (int k = k0; k < k1; ++k) {
          const int8_t* q = panel + static_cast<size_t>(k) * kPanel;
          if (k % 4 == 0) prefetch_ahead(q);  // four 32-byte rows per 128 bytes
          row(a, q, s, k, total);
        }
      } else {
        F acc[C][R][I::kVecs];
        CNGPT_UNROLL
        for (int chain = 0; chain < C; ++chain) zero_tile<I, R>(acc[chain]);
        int k = k0;
        for (; k + C <= k1; k += C) {
          const int8_t* q = panel + static_cast<size_t>(k) * kPanel;
          if (k % 4 < C) prefetch_ahead(q);
          CNGPT_UNROLL
          for (int chain = 0; chain < C; ++chain) row(a, q + chain * kPanel, s, k + chain, acc[chain]);
        }
        for (; k < k1; ++k) row(a, panel + static_cast<size_t>(k) * kPanel, s, k, acc[0]);
        fold_chains<I, C, R>(acc);
        CNGPT_UNROLL
        for (int r = 0; r < R; ++r)
          CNGPT_UNROLL
          for (int c = 0; c < I::kVecs; ++c) total[r][c] = I::fma(acc[0][r][c], s[c], total[r][c]);
      }
    }
    store_tile<I, R>(total, a);
  }
};

// The tile for n rows (1 <= n <= R), instantiated for every row count up to R.
template <class I, template <class, int> class Tile, int R>
inline void tile_rows(int n, const TileArgs& a) {
  if constexpr (R > 1) {
    if (n < R) {
      tile_rows<I, Tile, R - 1>(n, a);
      return;
    }
  }
  Tile<I, R>::run(a);
}

// Panels [p0, p1) of the job in tiles of up to MaxRows rows.
template <class I, template <class, int> class Tile, int MaxRows>
void run_panels(const PanelJob& j, int p0, int p1, size_t panel_bytes, const uint32_t* pairs = nullptr) {
  constexpr int kWidth = I::L * I::kVecs;
  const int K2 = (j.K + 1) / 2;
  const int blocks = j.mode == kInt8 ? (j.K + j.group - 1) / j.group : 0;
  TileArgs a{};
  a.K = j.K;
  a.K2 = K2;
  a.group = j.group;
  a.N = j.N;
  for (int p = p0; p < p1; ++p) {
    a.panel = static_cast<const char*>(j.w) + p * panel_bytes;
    a.scales = j.scales ? j.scales + static_cast<size_t>(p) * blocks * kPanel : nullptr;
    const int panel_cols = j.N - p * kPanel < kPanel ? j.N - p * kPanel : kPanel;
    for (int c0 = 0; c0 < panel_cols; c0 += kWidth) {
      a.c0 = c0;
      a.cols = panel_cols - c0 < kWidth ? panel_cols - c0 : kWidth;
      for (int m = 0; m < j.M; m += MaxRows) {
        a.x = j.x + static_cast<size_t>(m) * j.K;
        a.pairs = pairs ? pairs + static_cast<size_t>(m) * K2 : nullptr;
        a.out = j.out + static_cast<size_t>(m) * j.N + p * kPanel + c0;
        tile_rows<I, Tile, MaxRows>(j.M - m < MaxRows ? j.M - m : MaxRows, a);
      }
    }
  }
}

// Every mode on the float32 path of ISA I.
template <class I>
void run_mode(const PanelJob& j, int p0, int p1) {
  const size_t k = static_cast<size_t>(j.K);
  switch (j.mode) {
    case kFp32: run_panels<I, Fp32Tile, I::kMaxRows>(j, p0, p1, k * kPanel * sizeof(float)); break;
    case kBf16: run_panels<I, Bf16Tile, I::kMaxRowsBf16>(j, p0, p1, (k + 1) / 2 * 2 * kPanel * sizeof(uint16_t)); break;
    case kInt8: run_panels<I, Int8Tile, I::kMaxRowsInt8>(j, p0, p1, k * kPanel); break;
  }
}

}  // namespace

#endif  // CNGPT_TF_PANEL_TILES_H_

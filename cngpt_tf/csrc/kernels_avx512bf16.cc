// bf16 weights by AVX512-BF16's pair dot product (vdpbf16ps): x is rounded to bf16 once per call
// (cngpt_bf16_pairs), then each instruction adds x[k] * W[k, c] + x[k + 1] * W[k + 1, c] for 16
// columns, in float32: half the instructions of widening the weights and two FMAs. Compiled with
// -mavx512f -mavx512bf16; runs only where the CPU has AVX512-BF16 (panel_matmul.cc checks).
#include "panel_tiles.h"

namespace {

constexpr int kRows = 8;  // 16 accumulators + 2 weight registers

template <int R>
struct DotTile {
  static void run(const TileArgs& a) {
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const uint16_t* panel = static_cast<const uint16_t*>(a.panel);
    for (int kk = 0; kk < a.K2; ++kk) {
      const uint16_t* w = panel + static_cast<size_t>(kk) * 2 * kPanel;
      prefetch_ahead(w);
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w), w1 = (__m512bh)_mm512_loadu_si512(w + 32);
      for (int r = 0; r < R; ++r) {
        const __m512bh xr = (__m512bh)_mm512_set1_epi32(static_cast<int>(a.pairs[r * a.K2 + kk]));
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], w0, xr);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], w1, xr);
      }
    }
    const HalfMasks m = half_masks(a.cols);
    for (int r = 0; r < R; ++r) {
      _mm512_mask_storeu_ps(a.out + static_cast<size_t>(r) * a.N, m.lo, acc[r][0]);
      _mm512_mask_storeu_ps(a.out + static_cast<size_t>(r) * a.N + 16, m.hi, acc[r][1]);
    }
  }
};

template <int R>
inline void dot_rows(int n, const TileArgs& a) {
  if constexpr (R > 1) {
    if (n < R) {
      dot_rows<R - 1>(n, a);
      return;
    }
  }
  DotTile<R>::run(a);
}

}  // namespace

extern "C" void cngpt_panels_avx512bf16(const PanelJob* job, int p0, int p1) {
  const PanelJob& j = *job;
  const int K2 = (j.K + 1) / 2;
  TileArgs a{};
  a.K = j.K;
  a.K2 = K2;
  a.N = j.N;
  for (int p = p0; p < p1; ++p) {
    a.panel = static_cast<const uint16_t*>(j.w) + static_cast<size_t>(p) * K2 * 2 * kPanel;
    a.cols = j.N - p * kPanel < kPanel ? j.N - p * kPanel : kPanel;
    for (int m = 0; m < j.M; m += kRows) {
      a.pairs = j.x_pairs + static_cast<size_t>(m) * K2;
      a.out = j.out + static_cast<size_t>(m) * j.N + p * kPanel;
      dot_rows<kRows>(j.M - m < kRows ? j.M - m : kRows, a);
    }
  }
}

extern "C" void cngpt_bf16_pairs(const float* x, int M, int K, uint32_t* out) {
  const int K2 = (K + 1) / 2;
  for (int m = 0; m < M; ++m) {
    const float* row = x + static_cast<size_t>(m) * K;
    uint16_t* dst = reinterpret_cast<uint16_t*>(out + static_cast<size_t>(m) * K2);
    int k = 0;
    for (; k + 16 <= K; k += 16)  // round to nearest even, 16 at a time
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(row + k)));
    if (k < K) {
      alignas(32) uint16_t tail[16];
      const __mmask16 rest = static_cast<__mmask16>((1u << (K - k)) - 1);
      _mm256_store_si256(reinterpret_cast<__m256i*>(tail),
                         (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(rest, row + k)));
      for (int i = 0; i < K - k; ++i) dst[k + i] = tail[i];
    }
    if (K % 2) dst[K] = 0;  // the padding row's partner
  }
}

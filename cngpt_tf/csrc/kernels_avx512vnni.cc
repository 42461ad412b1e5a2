// int8 weights by AVX512-VNNI's byte dot product (vpdpbusd): x is quantised once per call, per row
// and block of `group` rows of W (the weights' own scale blocks), to int8 with a float32 scale
// (cngpt_int8_rows); then each instruction adds four products q_w * q_x to an int32 for 16 columns,
// exactly, and each block's integer sum is scaled once: sum = float(acc) * (scale_w * scale_x).
// A quarter of the instructions of widening every weight to float32 and multiplying there (the
// batch-8 bound: benchmarks/profile_generation.py). Compiled with -mavx512f -mavx512bw
// -mavx512vnni -mavx512vbmi; runs only where the CPU has them (panel_matmul.cc checks).
//
// The panels are the same [K, 32] int8 panels as every other variant reads (quantize.int8_panels):
// vpdpbusd wants each column's four k side by side, so four 32-byte rows are interleaved in registers
// by one two-source byte permute (vpermt2b) per 16 columns. vpdpbusd multiplies unsigned by signed
// bytes: the weights are made unsigned by flipping their top bit (q + 128, exactly) and the block's
// 128 * sum(q_x) is taken off again (cngpt_int8_rows computes it with the quantised row).
#include "panel_tiles.h"

namespace {

constexpr int kRows = 8;  // 16 int32 accumulators + 2 weights, 2 permute indices, the bit flip, x

// The permute indices: output dword j = bytes (row k, k + 1, k + 2, k + 3) of column c0 + j, from
// a = rows k, k + 1 (64 bytes) and b = rows k + 2, k + 3 (indices 64 and up pick from b).
inline __m512i interleave_index(int c0) {
  alignas(64) uint8_t idx[64];
  for (int j = 0; j < 16; ++j) {
    idx[4 * j + 0] = static_cast<uint8_t>(c0 + j);
    idx[4 * j + 1] = static_cast<uint8_t>(32 + c0 + j);
    idx[4 * j + 2] = static_cast<uint8_t>(64 + c0 + j);
    idx[4 * j + 3] = static_cast<uint8_t>(96 + c0 + j);
  }
  return _mm512_load_si512(idx);
}

struct Int8Rows {  // x quantised by cngpt_int8_rows, for one tile's first row
  const int8_t* q;        // [rows][blocks * group4]: each block zero-padded to a multiple of 4
  const float* scale;     // [rows][blocks]
  const int32_t* offset;  // [rows][blocks]: 128 * sum of the block's q
  int stride_q, blocks, group4;
};

template <int R>
struct VnniTile {
  // acc[r] += the products of rows k .. k + 3 (interleaved in w_lo, w_hi) with x's row r there
  [[gnu::always_inline]] static inline void quad(__m512i (&acc)[R][2], __m512i w_lo, __m512i w_hi, const Int8Rows& x,
                                                 ptrdiff_t at) {
    CNGPT_UNROLL
    for (int r = 0; r < R; ++r) {
      int32_t four;
      __builtin_memcpy(&four, x.q + static_cast<size_t>(r) * x.stride_q + at, 4);
      const __m512i xr = _mm512_set1_epi32(four);
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], w_lo, xr);
      acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], w_hi, xr);
    }
  }

  static void run(const TileArgs& a, const Int8Rows& x) {
    const __m512i lo_index = interleave_index(0), hi_index = interleave_index(16);
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    const int8_t* panel = static_cast<const int8_t*>(a.panel);
    for (int b = 0, k0 = 0; b < x.blocks; ++b, k0 += a.group) {
      const int k1 = k0 + a.group < a.K ? k0 + a.group : a.K;
      const ptrdiff_t first = static_cast<ptrdiff_t>(b) * x.group4 - k0;  // x.q offset of row k: first + k
      __m512i acc[R][2];
      CNGPT_UNROLL
      for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
      for (int k = k0; k < k1; k += 4) {
        // rows k .. k + 3, masked where the block ends first: never read past its last row (past the
        // last panel's end); a masked load costs what a plain one does
        const int8_t* w = panel + static_cast<size_t>(k) * kPanel;
        prefetch_ahead(w);
        const int left = k1 - k;
        const __mmask64 first_two = left >= 2 ? ~0ull : 0xFFFFFFFFull;
        const __mmask64 last_two = left >= 4 ? ~0ull : left == 3 ? 0xFFFFFFFFull : 0ull;
        const __m512i rows01 = _mm512_maskz_loadu_epi8(first_two, w);
        const __m512i rows23 = _mm512_maskz_loadu_epi8(last_two, w + 2 * kPanel);
        quad(acc, _mm512_xor_si512(_mm512_permutex2var_epi8(rows01, lo_index, rows23), flip),
             _mm512_xor_si512(_mm512_permutex2var_epi8(rows01, hi_index, rows23), flip), x, first + k);
      }
      // out (+)= float(acc - 128 * sum q_x) * scale_w * scale_x; the first block stores
      const __m512 s_lo = _mm512_loadu_ps(a.scales + b * kPanel), s_hi = _mm512_loadu_ps(a.scales + b * kPanel + 16);
      const HalfMasks m = half_masks(a.cols);
      CNGPT_UNROLL
      for (int r = 0; r < R; ++r) {
        const size_t at = static_cast<size_t>(r) * x.blocks + b;
        const __m512i offset = _mm512_set1_epi32(x.offset[at]);
        const __m512 sx = _mm512_set1_ps(x.scale[at]);
        float* o = a.out + static_cast<size_t>(r) * a.N;
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][0], offset));
        const __m512 hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][1], offset));
        const __m512 scale_lo = _mm512_mul_ps(s_lo, sx), scale_hi = _mm512_mul_ps(s_hi, sx);
        __m512 t_lo = _mm512_mul_ps(lo, scale_lo), t_hi = _mm512_mul_ps(hi, scale_hi);
        if (b > 0) {
          t_lo = _mm512_add_ps(_mm512_maskz_loadu_ps(m.lo, o), t_lo);
          t_hi = _mm512_add_ps(_mm512_maskz_loadu_ps(m.hi, o + 16), t_hi);
        }
        _mm512_mask_storeu_ps(o, m.lo, t_lo);
        _mm512_mask_storeu_ps(o + 16, m.hi, t_hi);
      }
    }
  }
};

template <int R>
inline void vnni_rows(int n, const TileArgs& a, const Int8Rows& x) {
  if constexpr (R > 1) {
    if (n < R) {
      vnni_rows<R - 1>(n, a, x);
      return;
    }
  }
  VnniTile<R>::run(a, x);
}

}  // namespace

extern "C" void cngpt_panels_avx512vnni(const PanelJob* job, int p0, int p1) {
  const PanelJob& j = *job;
  const int blocks = (j.K + j.group - 1) / j.group;
  const int group4 = (j.group + 3) / 4 * 4;
  TileArgs a{};
  a.K = j.K;
  a.group = j.group;
  a.N = j.N;
  for (int p = p0; p < p1; ++p) {
    a.panel = static_cast<const int8_t*>(j.w) + static_cast<size_t>(p) * j.K * kPanel;
    a.scales = j.scales + static_cast<size_t>(p) * blocks * kPanel;
    a.cols = j.N - p * kPanel < kPanel ? j.N - p * kPanel : kPanel;
    for (int m = 0; m < j.M; m += kRows) {
      Int8Rows x{};
      x.stride_q = blocks * group4;
      x.blocks = blocks;
      x.group4 = group4;
      x.q = j.x_int8 + static_cast<size_t>(m) * x.stride_q;
      x.scale = j.x_scales + static_cast<size_t>(m) * blocks;
      x.offset = j.x_offsets + static_cast<size_t>(m) * blocks;
      a.out = j.out + static_cast<size_t>(m) * j.N + p * kPanel;
      vnni_rows<kRows>(j.M - m < kRows ? j.M - m : kRows, a, x);
    }
  }
}

extern "C" void cngpt_int8_rows(const float* x, int M, int K, int group, int8_t* q, float* scales, int32_t* offsets) {
  const int blocks = (K + group - 1) / group, group4 = (group + 3) / 4 * 4;
  for (int m = 0; m < M; ++m) {
    for (int b = 0; b < blocks; ++b) {
      const float* v = x + static_cast<size_t>(m) * K + static_cast<size_t>(b) * group;
      const int n = K - b * group < group ? K - b * group : group;
      int8_t* out = q + (static_cast<size_t>(m) * blocks + b) * group4;
      // the block's largest |x|; a NaN or an infinity makes the scale NaN, so the sums come out NaN
      // (as float32 products would) instead of quietly wrong
      __m512 top = _mm512_setzero_ps();
      __mmask16 bad = 0;
      for (int i = 0; i < n; i += 16) {
        const __mmask16 in = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
        const __m512 val = _mm512_maskz_loadu_ps(in, v + i);
        const __m512 size = _mm512_abs_ps(val);
        bad |= _mm512_cmp_ps_mask(size, _mm512_set1_ps(3.4028235e38f), _CMP_NLE_UQ);  // NaN or +-inf
        top = _mm512_max_ps(top, size);
      }
      // x / max |x| * 127, not x * (127 / max |x|): that reciprocal overflows below 3.7e-37
      const float amax = _mm512_reduce_max_ps(top);
      const __m512 divisor = _mm512_set1_ps(amax > 0 ? amax : 1.0f);
      scales[static_cast<size_t>(m) * blocks + b] = bad ? __builtin_nanf("") : amax / 127.0f;
      int32_t sum = 0;
      for (int i = 0; i < group4; i += 16) {
        const int left = n - i;  // past n: zero (the padding the weights' masked rows meet)
        const __mmask16 in = left >= 16 ? 0xFFFF : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
        const __m512 unit = _mm512_div_ps(_mm512_maskz_loadu_ps(in, v + i), divisor);  // in [-1, 1]
        const __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(unit, _mm512_set1_ps(127.0f)));
        sum += _mm512_reduce_add_epi32(r);  // |r| <= 127: no overflow
        const int keep = group4 - i >= 16 ? 16 : group4 - i;
        _mm512_mask_cvtsepi32_storeu_epi8(out + i, static_cast<__mmask16>((1u << keep) - 1), r);
      }
      offsets[static_cast<size_t>(m) * blocks + b] = bad ? 0 : 128 * sum;
    }
  }
}

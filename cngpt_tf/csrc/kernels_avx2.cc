// The panel product on AVX2 + FMA (8-float registers), for x86 CPUs without AVX-512: the same loops
// as kernels_avx512.cc, a tile being half a panel (16 columns). Compiled with -mavx2 -mfma.
#include "decode_attention.h"
#include "panel_tiles.h"

namespace {

struct Isa {
  using F = __m256;
  static constexpr int L = 8;
  static constexpr int kVecs = 2;  // a tile is half a panel: 16 columns
  // 16 registers: 2R accumulators, the weights (2 fp32, 4 bf16, 2 + 2 scales int8) and x's broadcast
  static constexpr int kMaxRows = 6, kMaxRowsBf16 = 5, kMaxRowsInt8 = 5;
  static F zero() { return _mm256_setzero_ps(); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static float reduce(F v) {  // the sum of the 8 lanes
    const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)));
  }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void pair(const uint16_t* p, F& even, F& odd) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));  // 8 lanes of row pairs
    even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  static F int8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
};

}  // namespace

extern "C" void cngpt_panels_avx2(const PanelJob* job, int p0, int p1) { run_mode<Isa>(*job, p0, p1); }
extern "C" void cngpt_attention_avx2(const AttentionJob* job, int r0, int r1) {
  decode_attention_rows<Isa>(*job, r0, r1);
}

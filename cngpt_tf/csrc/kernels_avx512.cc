// The panel product on AVX-512F (16-float registers): fp32, bf16 widened by a shift, int8 widened
// and scaled in registers. Compiled with -mavx512f -mfma (cngpt_tf/native.py); runs only where the
// CPU has AVX-512F (panel_matmul.cc checks).
#include "decode_attention.h"
#include "panel_tiles.h"

namespace {

struct Isa {
  using F = __m512;
  static constexpr int L = 16;
  static constexpr int kVecs = 2;  // a tile is a whole 32-column panel
  // 32 registers: 16 accumulators + 2 (fp32), 4 (bf16: even and odd rows) or 4 (int8: + scales) weights
  static constexpr int kMaxRows = 8, kMaxRowsBf16 = 8, kMaxRowsInt8 = 8;
  static F zero() { return _mm512_setzero_ps(); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static float reduce(F v) { return _mm512_reduce_add_ps(v); }  // the sum of the 16 lanes
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void pair(const uint16_t* p, F& even, F& odd) {
    const __m512i v = _mm512_loadu_si512(p);  // 16 lanes of (row k | row k + 1 << 16)
    even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  static F int8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
};

}  // namespace

extern "C" void cngpt_panels_avx512(const PanelJob* job, int p0, int p1) { run_mode<Isa>(*job, p0, p1); }
extern "C" void cngpt_attention_avx512(const AttentionJob* job, int r0, int r1) {
  decode_attention_rows<Isa>(*job, r0, r1);
}

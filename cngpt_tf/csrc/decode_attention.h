// One decode step's attention (one new token per sequence) over the K/V cache, written once over an
// ISA's vector type like panel_tiles.h: kernels_avx2.cc and kernels_avx512.cc include it.
//
// For each row r = b * H + h (sequence b, head h), over the cache slots s < n whose key_mask[b, s]
// is 1 (every other slot is masked: causal past n - 1, padding below):
//   score_s = (q[r] . keys[r, s]) * scale,  p_s = exp(score_s - max) / sum exp(. - max),
//   out[r] = sum_s p_s * values[r, s]
// The same numbers XLA's batched dots and softmax give, summed in another order. Why a kernel: XLA
// reads all S slots of every layer's cache every step (the cache is S = prompt + new-token bucket
// slots, filled one a step, so on average half of them are empty) through batched dots of one row
// each, ~a quarter of a batch-8 int8 step; this reads only the slots in use, once, in order.
#ifndef CNGPT_TF_DECODE_ATTENTION_H_
#define CNGPT_TF_DECODE_ATTENTION_H_

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "panel_job.h"

namespace {

// keys[r, s, 0 .. D) . q[0 .. D): whole vectors, then a scalar tail (D need not be a multiple of L).
template <class I>
inline float dot_row(const float* q, const float* k, int D) {
  typename I::F acc = I::zero();
  int d = 0;
  for (; d + I::L <= D; d += I::L) acc = I::fma(I::load(q + d), I::load(k + d), acc);
  float sum = I::reduce(acc);
  for (; d < D; ++d) sum += q[d] * k[d];
  return sum;
}

// out[0 .. D) += p * v[0 .. D)
template <class I>
inline void add_scaled_row(float* out, float p, const float* v, int D) {
  const typename I::F pv = I::set1(p);
  int d = 0;
  for (; d + I::L <= D; d += I::L) I::store(out + d, I::fma(pv, I::load(v + d), I::load(out + d)));
  for (; d < D; ++d) out[d] += p * v[d];
}

template <class I>
void decode_attention_rows(const AttentionJob& j, int r0, int r1) {
  thread_local std::vector<float> scores;
  scores.resize(j.n);
  const size_t row_stride = static_cast<size_t>(j.S) * j.D;
  for (int r = r0; r < r1; ++r) {
    const float* q = j.q + static_cast<size_t>(r) * j.D;
    const float* keys = j.keys + r * row_stride;
    const float* values = j.values + r * row_stride;
    const int32_t* mask = j.key_mask + static_cast<size_t>(r / j.H) * j.S;
    float* out = j.out + static_cast<size_t>(r) * j.D;
    float top = -INFINITY;
    bool any_nan = false;
    for (int s = 0; s < j.n; ++s) {
      if (!mask[s]) continue;
      const float score = dot_row<I>(q, keys + static_cast<size_t>(s) * j.D, j.D) * j.scale;
      scores[s] = score;
      any_nan |= score != score;
      top = score > top ? score : top;
    }
    for (int d = 0; d < j.D; ++d) out[d] = 0.0f;
    float total = 0.0f;
    for (int s = 0; s < j.n; ++s) {
      if (!mask[s]) continue;
      const float p = any_nan ? NAN : std::exp(scores[s] - top);  // a NaN anywhere: the row is NaN, as XLA's
      total += p;
      add_scaled_row<I>(out, p, values + static_cast<size_t>(s) * j.D, j.D);
    }
    const float inverse = total > 0.0f || total != total ? 1.0f / total : 0.0f;  // no slot: zeros
    for (int d = 0; d < j.D; ++d) out[d] *= inverse;
  }
}

}  // namespace

#endif  // CNGPT_TF_DECODE_ATTENTION_H_

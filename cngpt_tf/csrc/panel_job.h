// The jobs of the per-ISA kernels (kernels_*.cc), filled in by panel_matmul.cc: one weight product
// (PanelJob) or one decode step's attention (AttentionJob, decode_attention.h).
//
// PanelJob:
// out[M, N] = x[M, K] @ W[K, N], W stored as column panels of kPanel columns (P = ceil(N / 32);
// panel p holds columns 32p .. 32p + 31, zero past N), in one of three weight modes:
//   fp32: panels [P, K, 32] float
//   bf16: panels [P, ceil(K / 2), 32, 2] bfloat16 bits: the rows in pairs, each column's two values
//         side by side (k even in the low half of a 32-bit lane, k odd in the high half), the layout
//         of AVX512-BF16's pair dot product; a zero row pads an odd K
//   int8: panels [P, K, 32] int8 and scales [P, ceil(K / group), 32] float: W[k, c] = q * scale of
//         (row block k / group, column c), converted in registers and multiplied in float32
// Plain C: the kernel files are compiled with different ISA flags and share no inline code.
#ifndef CNGPT_TF_PANEL_JOB_H_
#define CNGPT_TF_PANEL_JOB_H_

#include <cstdint>

constexpr int kPanel = 32;  // columns per panel; must match PANEL in cngpt_tf/native.py

enum PanelMode { kFp32 = 0, kBf16 = 1, kInt8 = 2 };

struct PanelJob {
  const float* x;           // [M, K]
  const uint32_t* x_pairs;  // bf16 by dot products only: x rounded to bf16, in pairs [M, ceil(K / 2)]
  const int8_t* x_int8;     // int8 by VNNI only (cngpt_int8_rows): x quantised per row and block of
  const float* x_scales;    //   `group`: q [M, blocks, group rounded up to 4], scales [M, blocks] and
  const int32_t* x_offsets; //   128 * the sum of each block's q [M, blocks]
  const void* w;            // the panels, as the mode stores them
  const float* scales;      // int8 only
  float* out;               // [M, N]
  int M, K, N, group, mode;
};

// out[r] = softmax over the slots s < n with key_mask[r / H, s] = 1 of (q[r] . keys[r, s]) * scale,
// applied to values[r, s]; r = b * H + h. q, out [BH, D]; keys, values [BH, S, D]; key_mask [B, S].
struct AttentionJob {
  const float* q;
  const float* keys;
  const float* values;
  const int32_t* key_mask;
  float* out;
  int BH, S, D, H, n;
  float scale;
};

extern "C" {
// Rows [r0, r1) of `job` (AVX2 + FMA, AVX-512F).
void cngpt_attention_avx2(const AttentionJob* job, int r0, int r1);
void cngpt_attention_avx512(const AttentionJob* job, int r0, int r1);
// Panels [p0, p1) of `job`; each needs its ISA (panel_matmul.cc checks before calling).
void cngpt_panels_avx2(const PanelJob* job, int p0, int p1);        // AVX2 + FMA: every mode
void cngpt_panels_avx512(const PanelJob* job, int p0, int p1);      // AVX-512F: every mode
void cngpt_panels_avx512bf16(const PanelJob* job, int p0, int p1);  // AVX512-BF16: bf16 only
void cngpt_panels_avx512vnni(const PanelJob* job, int p0, int p1);  // AVX512-VNNI (+ BW, VBMI): int8 only
void cngpt_panels_amxbf16(const PanelJob* job, int p0, int p1);     // AMX-BF16 (+ AVX512-BF16): bf16 only
// x [M, K] -> bf16 pairs [M, ceil(K / 2)], rounded to nearest even, zero past K (AVX512-BF16).
void cngpt_bf16_pairs(const float* x, int M, int K, uint32_t* out);
// x [M, K] -> int8 per row and block of `group` columns: q = round(x / max |x| * 127), scale =
// max |x| / 127 (NaN where the block holds a NaN or an infinity), offset = 128 * sum q (AVX512-VNNI).
void cngpt_int8_rows(const float* x, int M, int K, int group, int8_t* q, float* scales, int32_t* offsets);
}

#endif  // CNGPT_TF_PANEL_JOB_H_

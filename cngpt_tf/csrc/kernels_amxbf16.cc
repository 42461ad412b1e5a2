// bf16 weights by AMX tiles (TDPBF16PS; Intel Sapphire Rapids and later): x is rounded to bf16 once
// per call (cngpt_bf16_pairs, as for AVX512-BF16's dot product), then one instruction multiplies a
// tile of up to 16 rows of x by 16 pair rows (32 values of k) of 16 columns, summing in float32. The
// bf16 panels [K2, 32, 2] are already the tiles' pair layout: a weight tile is 16 of a panel's pair
// rows, 64 bytes (16 columns) of each, 128 bytes apart. Why: at batch 8 widening the weights to
// float32 and two FMAs per pair is bound by the FMA units, not by memory (on this project's Xeon:
// one decode step's products 11.9 -> 10.2 ms at batch 8, 49 -> 15 ms for a 64-row prefill; batch 1 is
// bound by memory either way). Compiled with -mavx512f -mfma -mavx512bf16 -mamx-tile -mamx-bf16;
// runs only where the CPU has AMX-BF16 and the OS lets this process use the tiles (panel_matmul.cc
// asks once, arch_prctl).
#include "panel_tiles.h"

namespace {

constexpr int kTile = 16;  // rows of x per tile, and pair rows of weights per tile

// Tiles 0 and 1: the output's two 16-column halves [rows, 16] float; 2: x's pairs [rows, 16];
// 3 and 4: the weights' pairs of the two halves [16, 16].
struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];  // bytes per row
  uint8_t rows[16];
};

void configure(int rows) {
  TileConfig c{};
  c.palette = 1;
  for (int t = 0; t < 5; ++t) c.colsb[t] = 64, c.rows[t] = t < 3 ? rows : kTile;
  _tile_loadconfig(&c);
}

}  // namespace

extern "C" void cngpt_panels_amxbf16(const PanelJob* job, int p0, int p1) {
  const PanelJob& j = *job;
  const int K2 = (j.K + 1) / 2, whole = K2 / kTile * kTile;  // pair rows in whole tiles; the rest by vdpbf16ps
  const size_t panel_pairs = static_cast<size_t>(K2) * 2 * kPanel;  // uint16 values per panel
  alignas(64) float sums[kTile][kPanel];
  int configured = 0;
  for (int p = p0; p < p1; ++p) {
    const uint16_t* panel = static_cast<const uint16_t*>(j.w) + p * panel_pairs;
    const HalfMasks mask = half_masks(j.N - p * kPanel);
    for (int m = 0; m < j.M; m += kTile) {  // the panel is read from memory for the first rows only
      const int rows = j.M - m < kTile ? j.M - m : kTile;
      if (rows != configured) configure(rows), configured = rows;
      const uint32_t* x = j.x_pairs + static_cast<size_t>(m) * K2;
      _tile_zero(0);
      _tile_zero(1);
      for (int kk = 0; kk < whole; kk += kTile) {
        const uint16_t* w = panel + static_cast<size_t>(kk) * 2 * kPanel;
        if (m == 0)
          for (int i = 0; i < kTile; ++i) prefetch_ahead(w + i * 2 * kPanel);  // each 128-byte pair row
        _tile_loadd(2, x + kk, K2 * 4);
        _tile_loadd(3, w, 2 * kPanel * 2);
        _tile_loadd(4, w + kPanel, 2 * kPanel * 2);
        _tile_dpbf16ps(0, 2, 3);
        _tile_dpbf16ps(1, 2, 4);
      }
      _tile_stored(0, &sums[0][0], kPanel * 4);
      _tile_stored(1, &sums[0][16], kPanel * 4);
      for (int r = 0; r < rows; ++r) {
        __m512 lo = _mm512_load_ps(sums[r]), hi = _mm512_load_ps(sums[r] + 16);
        for (int kk = whole; kk < K2; ++kk) {  // the pair rows short of a tile
          const uint16_t* w = panel + static_cast<size_t>(kk) * 2 * kPanel;
          const __m512bh xr = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[static_cast<size_t>(r) * K2 + kk]));
          lo = _mm512_dpbf16_ps(lo, (__m512bh)_mm512_loadu_si512(w), xr);
          hi = _mm512_dpbf16_ps(hi, (__m512bh)_mm512_loadu_si512(w + kPanel), xr);
        }
        float* out = j.out + static_cast<size_t>(m + r) * j.N + p * kPanel;
        _mm512_mask_storeu_ps(out, mask.lo, lo);
        _mm512_mask_storeu_ps(out + 16, mask.hi, hi);
      }
    }
  }
  if (configured) _tile_release();  // leave the thread's tile state as it was (unused)
}

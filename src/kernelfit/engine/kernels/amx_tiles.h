// The bf16 panel GEMM's inner product on AMX tiles (Intel Sapphire Rapids and later: AMX-TILE + AMX-BF16), where the
// CPU has them and Linux lends them: the panel (panel_gemm.h) is already laid out as TDPBF16PS's B operand — a row
// per pair of k, 16 columns x 2 bf16 = 64 bytes a tile row — so a tile load reads it as is.
//
// Why: one TDPBF16PS is 16 x 16 x 32 = 8,192 multiply-adds; on a 2-core Xeon with AMX a 512 x 2048 x 4096 Q4_K
// product ran at 609 G multiply-adds/s on the tiles against 91 on the AVX512-BF16 micro-kernel (vdpbf16ps, 12 rows x
// 32 columns; the EPYC's: 476), and 256-token prompts 3.9-6.2x faster (benchmarks/results/shapes-amx.md). The
// arithmetic is the same: bf16 inputs, float32 sums and output; every row is computed alone (a row's sums do not
// depend on the other rows of its tile), so a prompt split into calls writes the same bits as one call — what the
// server's cached prefixes rely on.
//
// Blocking: 4 accumulator tiles (32 rows x 32 columns), 2 row tiles and 2 panel tiles; per 32 k, 4 tile loads feed 4
// TDPBF16PS. Rows come in blocks of 32, the last of 16 when 16 or fewer are left; the caller pads x with zero rows to
// a multiple of 16 (a padded row's output is not stored).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#define KF_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace amx {

constexpr int64_t ROWS = 16;  // a tile's rows (the rows a call is padded to a multiple of)

#if defined(KF_AMX)
// Linux (5.16+) gives a process the tiles' 8 KiB of register state only when it asks for it (arch_prctl
// ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA; Documentation/arch/x86/xstate.rst); without it the first tile
// instruction kills the process (SIGILL). Asked once; a refusal leaves the AVX512-BF16 kernel in use.
inline bool permitted() {
  static const bool ok = [] {
    constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }();
  return ok;
}

// Palette 1, tiles 0-7 all 16 rows x 64 bytes (16 float32 sums, 32 bf16 of a row, or 16 columns x 2 bf16 of a pair
// of k). The configuration is a thread's: each worker loads it before its first tile instruction.
struct alignas(64) Config {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

inline void configure() {
  Config c;
  for (int i = 0; i < 8; ++i) c.rows[i] = 16, c.colsb[i] = 64;
  _tile_loadconfig(&c);
}

inline void release() { _tile_release(); }

// y[R rows, 32 columns] = x[R rows, k] . panel; R = 32 or 16; x bf16 rows ldx apart, k a multiple of 32; panel: per
// pair of k, 32 columns of two bf16 (panel_gemm.h's layout, `cols` uint32 a pair row); y float32 rows ldy apart
template <int R>
inline void block(const uint16_t* x, int64_t ldx, int64_t k, const uint32_t* panel, int64_t cols, float* y,
                  int64_t ldy) {
  static_assert(R == 16 || R == 32, "a block is one or two row tiles");
  _tile_zero(0);
  _tile_zero(1);
  if (R == 32) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t k0 = 0; k0 < k; k0 += 32) {
    _tile_loadd(6, panel + (k0 / 2) * cols, cols * 4);
    _tile_loadd(7, panel + (k0 / 2) * cols + 16, cols * 4);
    _tile_loadd(4, x + k0, ldx * 2);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if (R == 32) {
      _tile_loadd(5, x + 16 * ldx + k0, ldx * 2);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, y, ldy * 4);
  _tile_stored(1, y + 16, ldy * 4);
  if (R == 32) {
    _tile_stored(2, y + 16 * ldy, ldy * 4);
    _tile_stored(3, y + 16 * ldy + 16, ldy * 4);
  }
}

// All of x's m rows (the rows past m up to the next multiple of 16 readable: zero padding, or rows whose outputs
// are not wanted) past one 32-column panel into y's first `valid` columns
inline void rows(const uint16_t* x, int64_t ldx, int64_t m, int64_t k, const uint32_t* panel, int64_t cols, float* y,
                 int64_t ldy, int64_t valid) {
  alignas(64) float tmp[32 * 32];  // the blocks whose rows or columns are not all stored
  for (int64_t r0 = 0; r0 < m; r0 += 32) {
    const int64_t left = m - r0, r = left > 16 ? 32 : 16, stored = left < r ? left : r;
    const bool whole = stored == r && valid == 32;
    float* out = whole ? y + r0 * ldy : tmp;
    const int64_t ld = whole ? ldy : 32;
    if (r == 32)
      block<32>(x + r0 * ldx, ldx, k, panel, cols, out, ld);
    else
      block<16>(x + r0 * ldx, ldx, k, panel, cols, out, ld);
    if (!whole)
      for (int64_t i = 0; i < stored; ++i) std::memcpy(y + (r0 + i) * ldy, tmp + i * 32, valid * sizeof(float));
  }
}

// y[16 rows, 64 columns: panel p0's 32 then p1's, the first valid0 / valid1 of each stored] for x's m <= 16 rows
// (readable to 16, as rows'). Why: 16 rows past one panel feed 2 accumulators with 3 tile loads (x's 16 rows 2 k
// x 2 bytes apart, each row in its own 4 KiB page, and two panel tiles) per 2 TDPBF16PS; two panels share x's
// load: 5 per 4. An expert's ~8 rows past 16 panels of k = 2048, this CPU: 80 us one panel at a time, 60 two
// (a k split into two chains instead: 81 — loads, not the sums' latency, bound it). Each column's sums run over
// k in the same order as in rows(): the same bits.
inline void rows_two(const uint16_t* x, int64_t ldx, int64_t m, int64_t k, const uint32_t* p0, const uint32_t* p1,
                     int64_t cols, float* y, int64_t ldy, int64_t valid0, int64_t valid1) {
  alignas(64) float tmp[16 * 64];
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t k0 = 0; k0 < k; k0 += 32) {
    _tile_loadd(4, x + k0, ldx * 2);
    _tile_loadd(5, p0 + (k0 / 2) * cols, cols * 4);
    _tile_loadd(6, p0 + (k0 / 2) * cols + 16, cols * 4);
    _tile_loadd(7, p1 + (k0 / 2) * cols, cols * 4);
    _tile_dpbf16ps(0, 4, 5);
    _tile_dpbf16ps(1, 4, 6);
    _tile_dpbf16ps(2, 4, 7);
    _tile_loadd(5, p1 + (k0 / 2) * cols + 16, cols * 4);
    _tile_dpbf16ps(3, 4, 5);
  }
  _tile_stored(0, tmp, 64 * 4);
  _tile_stored(1, tmp + 16, 64 * 4);
  _tile_stored(2, tmp + 32, 64 * 4);
  _tile_stored(3, tmp + 48, 64 * 4);
  for (int64_t i = 0; i < m; ++i) {
    std::memcpy(y + i * ldy, tmp + i * 64, valid0 * sizeof(float));
    std::memcpy(y + i * ldy + 32, tmp + i * 64 + 32, valid1 * sizeof(float));
  }
}

#else
inline void configure() {}
inline void release() {}
#endif

// Whether the tile kernel runs here: built for it (-march=native on such a CPU), the kernel lends the tiles, and
// KERNELFIT_AMX=0 is not set (read at each call: the AVX512-BF16 kernel can be compared in one process)
inline bool ready() {
#if defined(KF_AMX)
  const char* off = std::getenv("KERNELFIT_AMX");
  return !(off && off[0] == '0') && permitted();
#else
  return false;
#endif
}

}  // namespace amx

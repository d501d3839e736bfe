// Load-time repacking of a GGUF file's codes into dot_kernels.h's tiles, in one pass each instead of numpy's
// several (engine/weights.py tile_codes and engine/gguf/blocks.py's decoders are the reference, and the fallback
// where this is not built): a Qwen2.5-1.5B-shaped Q4_K_M file spent ~5 s of its ~9 s load tiling codes and ~2 s
// unpacking Q6_K's in numpy on 2 cores.
//
// These run on the reader's worker threads with the GIL released: plain loops over raw pointers, no ATen op (a torch
// op on another thread starts an OpenMP team of its own, which slowed every later decode step 4x).
#pragma once

#include <torch/extension.h>

#include "code_formats.h"

#include <cstdint>
#include <cstring>
#include <vector>

namespace repack {

constexpr int64_t TILE = 8;

// One row's codes (each < 2^bits) into row r of a tile in dot_kernels.h's order (code_at): 8 bits, per 4 columns the 8
// rows' 4 bytes; 4 bits, per 8 columns the 8 rows' 4 bytes, column c + b in the low nibble of byte b and c + 4 + b in
// its high one; 6 bits, per 16 columns the low 4 bits so (64 bytes), then the 8 rows' 4 bytes of high bit pairs
// (columns c + b + 4j at bits 2j of byte b).
inline void tile_row(const uint8_t* row, uint8_t* tile, int64_t r, int64_t k, int64_t bits) {
  if (bits == 8) {
    for (int64_t c = 0; c < k; c += 4) std::memcpy(tile + (c / 4) * 32 + r * 4, row + c, 4);
    return;
  }
  for (int64_t c = 0; c < k; c += 8) {
    uint8_t* b = tile + dot::nibble_offset(int(bits), c) + r * 4;
    for (int j = 0; j < 4; ++j) b[j] = static_cast<uint8_t>((row[c + j] & 0x0F) | ((row[c + 4 + j] & 0x0F) << 4));
  }
  if (bits == 6)
    for (int64_t c = 0; c < k; c += 16) {
      uint8_t* b = tile + dot::pairs_offset(c) + r * 4;
      for (int j = 0; j < 4; ++j)
        b[j] = static_cast<uint8_t>((row[c + j] >> 4) | ((row[c + 4 + j] >> 4) << 2) | ((row[c + 8 + j] >> 4) << 4) |
                                    ((row[c + 12 + j] >> 4) << 6));
    }
}

// the tiles [tile0, tile0 + ceil(n / 8)) of dst [tiles, k * bits] that n rows fill; a last tile's padding rows zeroed
inline uint8_t* tiles_for(at::Tensor& dst, int64_t n, int64_t k, int64_t tile0, int64_t bits, const char* who) {
  TORCH_CHECK(dst.dim() == 2 && dst.scalar_type() == at::kByte && dst.is_contiguous() &&
                  (bits == 4 || bits == 6 || bits == 8), who, ": tiles uint8 [tiles, k * bits], 4, 6 or 8 bits");
  const int64_t tiles = (n + TILE - 1) / TILE;
  TORCH_CHECK(dst.size(1) == k * bits && k % (bits == 6 ? 16 : 8) == 0 && tile0 >= 0 && tile0 + tiles <= dst.size(0),
              who, ": shapes do not match");
  uint8_t* out = dst.data_ptr<uint8_t>() + tile0 * k * bits;
  if (n % TILE) std::memset(out + (tiles - 1) * k * bits, 0, k * bits);  // every other byte is written
  return out;
}

// uint8 codes [n, k] -> tiles [tile0, tile0 + ceil(n / 8)) of dst (tile_row). Rows past n are written as zeros.
inline void tile_codes(const at::Tensor& codes, at::Tensor dst, int64_t tile0, int64_t bits) {
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kByte && codes.is_contiguous(),
              "tile_codes: uint8 codes [n, k]");
  const int64_t n = codes.size(0), k = codes.size(1);
  uint8_t* out = tiles_for(dst, n, k, tile0, bits, "tile_codes");
  const uint8_t* src = codes.data_ptr<uint8_t>();
  for (int64_t i = 0; i < n; ++i) tile_row(src + i * k, out + (i / TILE) * k * bits, i % TILE, k, bits);
}

// The decoders read the file's blocks at an address (a numpy array's, often of a read-only memory map, which torch
// would not wrap without a warning a call): codes.numel() / 256 blocks, contiguous.

inline const uint8_t* blocks_at(int64_t address, const at::Tensor& codes, const char* who) {
  TORCH_CHECK(address != 0 && codes.scalar_type() == at::kByte && codes.is_contiguous() && codes.numel() % 256 == 0,
              who, ": the blocks' address and uint8 codes, a multiple of 256");
  return reinterpret_cast<const uint8_t*>(address);
}

// Q4_K block (144 bytes a 256 values: d, dmin, 12 bytes of scales, 128 bytes of nibbles) -> codes 0..15: each 32
// bytes give 64 values, their low nibbles first (gguf-py Q4_K, blocks.py dot_groups)
inline void q4_k_block(const uint8_t* b, uint8_t* y) {
  const uint8_t* qs = b + 16;
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < 32; ++l) {
      y[j * 64 + l] = qs[j * 32 + l] & 0x0F;
      y[j * 64 + 32 + l] = qs[j * 32 + l] >> 4;
    }
}

// Q6_K block (210 bytes a 256 values: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales, d) -> codes
// 0..63 (value = d * scale * (code - 32): ggml-quants.c dequantize_row_q6_K)
inline void q6_k_block(const uint8_t* b, uint8_t* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  for (int half = 0; half < 2; ++half, ql += 64, qh += 32) {
    uint8_t* o = y + half * 128;
    for (int l = 0; l < 32; ++l) {
      o[l] = static_cast<uint8_t>((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4));
      o[l + 32] = static_cast<uint8_t>((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4));
      o[l + 64] = static_cast<uint8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
      o[l + 96] = static_cast<uint8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
    }
  }
}

inline void q4_k_codes(int64_t raw_address, at::Tensor codes) {  // codes.numel() / 256 blocks -> codes
  const uint8_t* b = blocks_at(raw_address, codes, "q4_k_codes");
  uint8_t* y = codes.data_ptr<uint8_t>();
  for (int64_t blk = 0; blk < codes.numel() / 256; ++blk) q4_k_block(b + blk * 144, y + blk * 256);
}

inline void q6_k_codes(int64_t raw_address, at::Tensor codes) {
  const uint8_t* b = blocks_at(raw_address, codes, "q6_k_codes");
  uint8_t* y = codes.data_ptr<uint8_t>();
  for (int64_t blk = 0; blk < codes.numel() / 256; ++blk) q6_k_block(b + blk * 210, y + blk * 256);
}

// n rows of k columns of Q4_K (bits 4) or Q6_K (bits 6) blocks at an address, rows contiguous, straight into the
// tiles [tile0, ...) of dst: each row decoded into a buffer of k codes and tiled (tile_row) — the same bytes as
// q4_k_codes / q6_k_codes then tile_codes, without their [n, k] array of codes (a byte a weight: 2x a Q4_K file,
// written and read again by every load; on fresh pages, which this VM faults in slowly)
inline void block_tiles(int64_t raw_address, int64_t n, int64_t k, at::Tensor dst, int64_t tile0, int64_t bits) {
  TORCH_CHECK(raw_address != 0 && k % 256 == 0 && (bits == 4 || bits == 6),
              "block_tiles: Q4_K (4 bits) or Q6_K (6 bits) blocks, K a multiple of 256");
  const int64_t block = bits == 4 ? 144 : 210, row_bytes = k / 256 * block;
  uint8_t* out = tiles_for(dst, n, k, tile0, bits, "block_tiles");
  const uint8_t* raw = reinterpret_cast<const uint8_t*>(raw_address);
  std::vector<uint8_t> row(k);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t blk = 0; blk < k / 256; ++blk) {
      if (bits == 4) q4_k_block(raw + i * row_bytes + blk * block, row.data() + blk * 256);
      else q6_k_block(raw + i * row_bytes + blk * block, row.data() + blk * 256);
    }
    tile_row(row.data(), out + (i / TILE) * k * bits, i % TILE, k, bits);
  }
}

}  // namespace repack

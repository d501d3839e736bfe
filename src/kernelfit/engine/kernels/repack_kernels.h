// Load-time repacking of a GGUF file's codes into dot_kernels.h's tiles, in one pass each instead of numpy's
// several (engine/weights.py tile_codes and engine/gguf/blocks.py's decoders are the reference, and the fallback
// where this is not built): a Qwen2.5-1.5B-shaped Q4_K_M file spent ~5 s of its ~9 s load tiling codes and ~2 s
// unpacking Q6_K's in numpy on 2 cores.
//
// These run on the reader's worker threads with the GIL released: plain loops over raw pointers, no ATen op (a torch
// op on another thread starts an OpenMP team of its own, which slowed every later decode step 4x).
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <cstring>

namespace repack {

constexpr int64_t TILE = 8;

// uint8 codes [n, k] (each < 2^bits) -> tiles [tile0, tile0 + ceil(n / 8)) of dst [tiles, k * bits] in
// dot_kernels.h's order (code_at): 8 bits, per 4 columns the 8 rows' 4 bytes; 4 bits, per 8 columns the 8 rows' 4
// bytes, column c + b in the low nibble of byte b and c + 4 + b in its high one; 6 bits, per 16 columns the low 4
// bits so (64 bytes), then the 8 rows' 4 bytes of high bit pairs (columns c + b + 4j at bits 2j of byte b). Rows past
// n are written as zeros.
inline void tile_codes(const at::Tensor& codes, at::Tensor dst, int64_t tile0, int64_t bits) {
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kByte && codes.is_contiguous() && dst.dim() == 2 &&
                  dst.scalar_type() == at::kByte && dst.is_contiguous() && (bits == 4 || bits == 6 || bits == 8),
              "tile_codes: uint8 codes [n, k] and tiles [tiles, k * bits], 4, 6 or 8 bits");
  const int64_t n = codes.size(0), k = codes.size(1), tiles = (n + TILE - 1) / TILE;
  TORCH_CHECK(dst.size(1) == k * bits && k % (bits == 6 ? 16 : 8) == 0 && tile0 >= 0 && tile0 + tiles <= dst.size(0),
              "tile_codes: shapes do not match");
  const uint8_t* src = codes.data_ptr<uint8_t>();
  uint8_t* out = dst.data_ptr<uint8_t>() + tile0 * k * bits;
  std::memset(out, 0, tiles * k * bits);
  for (int64_t t = 0; t < tiles; ++t) {
    uint8_t* tile = out + t * k * bits;
    for (int64_t r = 0; r < TILE && t * TILE + r < n; ++r) {
      const uint8_t* row = src + (t * TILE + r) * k;
      if (bits == 8) {
        for (int64_t c = 0; c < k; c += 4) std::memcpy(tile + (c / 4) * 32 + r * 4, row + c, 4);
      } else {
        for (int64_t c = 0; c < k; c += 8) {
          uint8_t* b = tile + (bits == 6 ? (c / 16) * 96 + (c % 16) / 8 * 32 : c * 4) + r * 4;  // dot::nibble_offset
          for (int j = 0; j < 4; ++j) b[j] = static_cast<uint8_t>((row[c + j] & 0x0F) | ((row[c + 4 + j] & 0x0F) << 4));
        }
        if (bits == 6)
          for (int64_t c = 0; c < k; c += 16) {
            uint8_t* b = tile + (c / 16) * 96 + 64 + r * 4;  // dot::pairs_offset
            for (int j = 0; j < 4; ++j)
              b[j] = static_cast<uint8_t>((row[c + j] >> 4) | ((row[c + 4 + j] >> 4) << 2) |
                                          ((row[c + 8 + j] >> 4) << 4) | ((row[c + 12 + j] >> 4) << 6));
          }
      }
    }
  }
}

// The decoders read the file's blocks at an address (a numpy array's, often of a read-only memory map, which torch
// would not wrap without a warning a call): codes.numel() / 256 blocks, contiguous.

inline const uint8_t* blocks_at(int64_t address, const at::Tensor& codes, const char* who) {
  TORCH_CHECK(address != 0 && codes.scalar_type() == at::kByte && codes.is_contiguous() && codes.numel() % 256 == 0,
              who, ": the blocks' address and uint8 codes, a multiple of 256");
  return reinterpret_cast<const uint8_t*>(address);
}

// Q4_K blocks (144 bytes a 256 values: d, dmin, 12 bytes of scales, 128 bytes of nibbles) -> codes 0..15 [n, k]:
// each 32 bytes give 64 values, their low nibbles first (gguf-py Q4_K, blocks.py dot_groups)
inline void q4_k_codes(int64_t raw_address, at::Tensor codes) {
  const uint8_t* b = blocks_at(raw_address, codes, "q4_k_codes");
  uint8_t* y = codes.data_ptr<uint8_t>();
  for (int64_t blk = 0; blk < codes.numel() / 256; ++blk, b += 144, y += 256) {
    const uint8_t* qs = b + 16;
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 32; ++l) {
        y[j * 64 + l] = qs[j * 32 + l] & 0x0F;
        y[j * 64 + 32 + l] = qs[j * 32 + l] >> 4;
      }
  }
}

// Q6_K blocks (210 bytes a 256 values: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales, d) -> codes
// 0..63 [n, k] (value = d * scale * (code - 32): ggml-quants.c dequantize_row_q6_K)
inline void q6_k_codes(int64_t raw_address, at::Tensor codes) {
  const uint8_t* b = blocks_at(raw_address, codes, "q6_k_codes");
  uint8_t* y = codes.data_ptr<uint8_t>();
  for (int64_t blk = 0; blk < codes.numel() / 256; ++blk, b += 210, y += 256) {
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
}

}  // namespace repack

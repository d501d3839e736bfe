// How a dot weight's tile (8 rows, dot_kernels.h) holds its codes, and the vector steps that read them: the byte
// offsets of a column's codes, a grid's lookup, Q6_K's high bits. Shared by the dot products, the unpacking, the
// panels, the int8 GEMM and the load-time tiler (repack_kernels.h), which must agree byte for byte.
#pragma once

#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KF_DOT_AVX2 1
#endif

namespace dot {

// Layout of one tile (8 rows): BITS 8: for each 4 columns c..c+3, 32 bytes = row r's 4 codes at 4r..4r+3.
// BITS 4: for each 8 columns c..c+7, 32 bytes; byte 4r+b holds column c+b (low nibble) and c+4+b (high) of row r.
// BITS 6 (Q6_K's codes 0..63, the file's 6 bits a weight; they were held as 8-bit codes, 1.22x those tensors' bytes
// a token): for each 16 columns c..c+15, 96 bytes: the low 4 bits of c..c+7 and of c+8..c+15 as BITS 4 (32 bytes
// each), then the high bit pairs (32 bytes; byte 4r+b holds columns c+b, c+4+b, c+8+b, c+12+b of row r at bits 0, 2,
// 4, 6) — so a nibble vector's high bits are one shift and mask of the pairs' vector (add_high_bits), and a tile is
// one stream, as the other layouts (the pairs as a second plane after the nibbles read at ~29 GB/s here, one stream
// at ~35: the prefetchers follow one stream a tile better).
// A weight's code format (the kernels' BITS, the Python side's `bits` argument): its bits a code (4, 6 or 8) | its grid
// << 8. 4-bit codes of a non-uniform grid (IQ4_NL / IQ4_XS's 16 int8 values; MXFP4's e2m1 values, doubled) are
// looked up (one vpshufb a vector) as unsigned bytes value + 128: w = scale * (u - 128), a symmetric type's factor
// -128 (Q8_0's), so the integer dot products, the panels and the GEMM are the linear codes' with one lookup more.
enum Grid { LINEAR = 0, GRID_IQ4 = 1, GRID_MXFP4 = 2 };
constexpr int code_bits(int format) { return format & 0xFF; }
constexpr int grid_of(int format) { return format >> 8; }
constexpr int IQ4_CODES = 4 | GRID_IQ4 << 8, MXFP4_CODES = 4 | GRID_MXFP4 << 8;
// ggml-common.h kvalues_iq4nl and kvalues_mxfp4, + 128
alignas(16) static const uint8_t GRID_BYTES[3][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {1, 24, 45, 63, 79, 93, 106, 118, 129, 141, 153, 166, 181, 197, 217, 241},
    {128, 129, 130, 131, 132, 134, 136, 140, 128, 127, 126, 125, 124, 122, 120, 116}};

// the byte offset in a tile of the 32 nibble bytes of columns c..c+7 (c a multiple of 8), BITS 4 or 6
constexpr int64_t nibble_offset(int bits, int64_t c) { return bits == 6 ? (c / 16) * 96 + (c % 16) / 8 * 32 : c * 4; }
// BITS 6: the byte offset of the high bit pairs of the 16 columns holding c
constexpr int64_t pairs_offset(int64_t c) { return (c / 16) * 96 + 64; }

inline int32_t code_at(int format, const uint8_t* codes, int64_t row, int64_t col) {  // (row, col) of a tile
  const int bits = code_bits(format);
  if (bits == 8) return codes[(col / 4) * 32 + row * 4 + col % 4];
  const uint8_t b = codes[nibble_offset(bits, col - col % 8) + row * 4 + col % 4];
  const int32_t low = (col % 8) < 4 ? (b & 0x0F) : (b >> 4);
  if (bits == 4) return GRID_BYTES[grid_of(format)][low];
  const uint8_t h = codes[pairs_offset(col) + row * 4 + col % 4];
  return low | (((h >> (2 * ((col % 16) / 4))) & 3) << 4);
}

#if defined(KF_DOT_AVX2)
// BITS 6: the high 2 bits into the nibble vectors lo (columns c..c+3) and hi (c+4..c+7) of a 16-column block's first
// half (second false) or second half, from the block's vector of high bit pairs h
inline void add_high_bits(__m256i h, bool second, __m256i& lo, __m256i& hi) {
  const __m256i two = _mm256_set1_epi8(0x30);
  const __m256i q = second ? h : _mm256_slli_epi16(h, 4);
  lo = _mm256_or_si256(lo, _mm256_and_si256(q, two));
  hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_srli_epi16(q, 2), two));
}
#if defined(__AVX512BW__)
inline void add_high_bits(__m512i h, bool second, __m512i& lo, __m512i& hi) {  // the same on two tiles
  const __m512i two = _mm512_set1_epi8(0x30);
  const __m512i q = second ? h : _mm512_slli_epi16(h, 4);
  lo = _mm512_or_si512(lo, _mm512_and_si512(q, two));
  hi = _mm512_or_si512(hi, _mm512_and_si512(_mm512_srli_epi16(q, 2), two));
}
#endif

// a grid's bytes for 32 nibbles (each in 0..15)
template <int FORMAT>
inline __m256i grid_bytes(__m256i nibbles) {
  if (grid_of(FORMAT) == LINEAR) return nibbles;
  const __m256i table =
      _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(GRID_BYTES[grid_of(FORMAT)])));
  return _mm256_shuffle_epi8(table, nibbles);
}
#if defined(__AVX512BW__)
template <int FORMAT>
inline __m512i grid_bytes(__m512i nibbles) {
  if (grid_of(FORMAT) == LINEAR) return nibbles;
  const __m512i table =
      _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(GRID_BYTES[grid_of(FORMAT)])));
  return _mm512_shuffle_epi8(table, nibbles);
}
#endif
#endif

}  // namespace dot

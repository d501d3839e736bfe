// The dot products' 512-bit registers (dot_kernels.h's int_dot and tile_dot over Zmm): two tiles at once, 16 rows —
// tile t's 8 lanes low, t + 1's high — where the compiler targets AVX-512 VNNI. Each lane gets Ymm's integer sums and
// float operations, so the same bits, in half the instructions a row.
//
// Why: the exact two-digit products cost two vpdpbusd a code per activation row, so a step of several rows (the
// server's batched decode) is bound by them: 8 rows over an 8960 x 1536 Q4_K weight 1393 us on 256-bit registers,
// 1173-1210 on these (Q6_K 1536 x 8960: 2033 -> 1864); one row is bound by memory either way. Included inside
// dot_kernels.h's namespace dot, after Ymm.
#pragma once

#if defined(KF_DOT_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define KF_DOT_PAIRS 1

struct Zmm {
  using I = __m512i;
  using F = __m512;
  static constexpr int64_t ROWS = 2 * TILE;
  static I zero() { return _mm512_setzero_si512(); }
  static I codes(const uint8_t* c0, const uint8_t* c1, int64_t at) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(Ymm::codes(c0, c0, at)), Ymm::codes(c1, c1, at), 1);
  }
  static void prefetch(const uint8_t* c0, const uint8_t* c1, int64_t at) {
    Ymm::prefetch(c0, c0, at);
    Ymm::prefetch(c1, c1, at);
  }
  static I nibbles(I v, bool high) {
    const I nib = _mm512_set1_epi8(0x0F);
    return _mm512_and_si512(high ? _mm512_srli_epi16(v, 4) : v, nib);
  }
  static I dot(I acc, I u, const int8_t* p) {
    int32_t w;
    std::memcpy(&w, p, 4);
    return _mm512_dpbusd_epi32(acc, u, _mm512_set1_epi32(w));
  }
  static F to_float(I h0, I h1, I l0, I l1) {
    const I ih = _mm512_add_epi32(h0, h1), il = _mm512_add_epi32(l0, l1);
    return _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(ih, 7), il));
  }
  template <typename T>
  static F floats(const T* p0, const T* p1, int64_t at) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(load8(p0 + at)), load8(p1 + at), 1);
  }
  static F fzero() { return _mm512_setzero_ps(); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static void store(float* out, F a, F b) { _mm512_storeu_ps(out, _mm512_add_ps(a, b)); }
};
#endif

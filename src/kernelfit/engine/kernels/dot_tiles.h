// The dot products' tile kernels (dot_kernels.h): int_dot, a tile's integer sums over one activation block, and
// tile_dot, its rows' products over all of k — written once over the register they run on. Ymm holds one tile's 8
// rows (256 bits); Zmm two tiles' 16 (tile t's 8 lanes low, t + 1's high) where the compiler targets AVX-512 VNNI:
// each lane gets Ymm's integer sums and float operations, so the same bits, in half the instructions a row. Why Zmm:
// the exact two-digit products cost two vpdpbusd a code per activation row, so a step of several rows (the server's
// batched decode) is bound by them: 8 rows over an 8960 x 1536 Q4_K weight 1393 us on Ymm, 1173-1210 on Zmm (Q6_K
// 1536 x 8960: 2033 -> 1864); one row is bound by memory either way. Included inside dot_kernels.h's namespace dot,
// after Act and its helpers, before the products that run the tiles (mm_tiles).
#pragma once

#if defined(KF_DOT_AVX2)
// The registers the products run on: Ymm holds one tile's 8 rows (256 bits); Zmm (below, AVX-512 VNNI) two
// tiles' 16. int_dot and tile_dot are written once over them: the same integer sums and float operations a lane.
struct Ymm {
  using I = __m256i;
  using F = __m256;
  static constexpr int64_t ROWS = TILE;
  static I zero() { return _mm256_setzero_si256(); }
  static I codes(const uint8_t* c0, const uint8_t*, int64_t at) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c0 + at));
  }
  static void prefetch(const uint8_t* c0, const uint8_t*, int64_t at) {
    _mm_prefetch(reinterpret_cast<const char*>(c0 + at), _MM_HINT_T0);
  }
  static I nibbles(I v, bool high) {
    const I nib = _mm256_set1_epi8(0x0F);
    return _mm256_and_si256(high ? _mm256_srli_epi16(v, 4) : v, nib);
  }
  static I dot(I acc, I u, const int8_t* p) { return dot_u8s8(acc, u, bcast4(p)); }
  static I dot_small(I acc, I u, const int8_t* p) { return dot_u7s8(acc, u, bcast4(p)); }  // codes below 128
  static F to_float(I h0, I h1, I l0, I l1) {
    const I ih = _mm256_add_epi32(h0, h1), il = _mm256_add_epi32(l0, l1);
    return _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_slli_epi32(ih, 7), il));
  }
  template <typename T>
  static F floats(const T* p0, const T*, int64_t at) { return load8(p0 + at); }
  static F fzero() { return _mm256_setzero_ps(); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static void store(float* out, F a, F b) { _mm256_storeu_ps(out, _mm256_add_ps(a, b)); }
};
#endif

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
  static I dot_small(I acc, I u, const int8_t* p) { return dot(acc, u, p); }
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

#if defined(KF_DOT_AVX2)
// The V::ROWS rows' integer dot products over columns cb..ce (at most one activation block) as float lanes, tile c0
// (and c1 where V holds two): codes times the activation's two digits, high digit first (hi * DIGIT_BASE + lo)
template <int BITS, typename V>
inline typename V::F int_dot(const uint8_t* c0, const uint8_t* c1, const Act& a, int64_t cb, int64_t ce) {
  // four independent accumulators (high / low activation digit x two column halves): vpdpbusd's latency would
  // otherwise chain every product of the group
  typename V::I h0 = V::zero(), h1 = h0, l0 = h0, l1 = h0;
  const int8_t* ah = a.hi.data();
  const int8_t* al = a.lo.data();
#if !((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__))
  if constexpr (code_bits(BITS) == 4 && grid_of(BITS) == LINEAR && std::is_same<V, Ymm>::value) {
    // without VNNI, codes 0..15: each vpmaddubsw pair sum is at most 2 * 15 * 127 = 3810, so a block's (at most 32
    // columns: 8 of them per digit) add up in int16 lanes (<= 30480 < 2^15) and widen once — the same integers as a
    // vpmaddwd per product, and each code byte no longer split into two nibbles as dot_u8s8 does (one-row step of a
    // 1.3 GB Q4_K_M file on a 2-core AVX2 EPYC: 88.5 ms with the nibble-split products, 50-64 ms this way, noisy)
    __m256i sh = _mm256_setzero_si256(), sl = sh;
#pragma GCC unroll 4
    for (int64_t c = cb; c < ce; c += 8) {
      V::prefetch(c0, c1, c * 4 + PREFETCH_BYTES);
      const __m256i v = V::codes(c0, c1, c * 4);
      const __m256i lo = V::nibbles(v, false), hi = V::nibbles(v, true);
      sh = _mm256_add_epi16(sh, _mm256_maddubs_epi16(lo, bcast4(ah + c)));
      sh = _mm256_add_epi16(sh, _mm256_maddubs_epi16(hi, bcast4(ah + c + 4)));
      sl = _mm256_add_epi16(sl, _mm256_maddubs_epi16(lo, bcast4(al + c)));
      sl = _mm256_add_epi16(sl, _mm256_maddubs_epi16(hi, bcast4(al + c + 4)));
    }
    const __m256i ones = _mm256_set1_epi16(1);
    return V::to_float(_mm256_madd_epi16(sh, ones), h1, _mm256_madd_epi16(sl, ones), l1);
  }
#endif
  if (code_bits(BITS) == 4) {  // a grid's bytes reach 241 (a VNNI build's linear codes take this loop too)
#pragma GCC unroll 4
    for (int64_t c = cb; c < ce; c += 8) {
      V::prefetch(c0, c1, c * 4 + PREFETCH_BYTES);
      const typename V::I v = V::codes(c0, c1, c * 4);
      const typename V::I lo = grid_bytes<BITS>(V::nibbles(v, false)), hi = grid_bytes<BITS>(V::nibbles(v, true));
      h0 = V::dot(h0, lo, ah + c);
      h1 = V::dot(h1, hi, ah + c + 4);
      l0 = V::dot(l0, lo, al + c);
      l1 = V::dot(l1, hi, al + c + 4);
    }
  } else if (BITS == 6) {  // 16 columns a step: two nibble vectors and their high bit pairs (96 bytes, 8 rows)
#pragma GCC unroll 2
    for (int64_t c = cb; c < ce; c += 16) {
      const int64_t n0 = nibble_offset(6, c);  // the block's 96 bytes (code_formats.h)
      V::prefetch(c0, c1, n0 + PREFETCH_BYTES);
      V::prefetch(c0, c1, n0 + PREFETCH_BYTES + 64);
      const typename V::I v0 = V::codes(c0, c1, n0), v1 = V::codes(c0, c1, nibble_offset(6, c + 8));
      const typename V::I h = V::codes(c0, c1, pairs_offset(c));
      typename V::I lo0 = V::nibbles(v0, false), hi0 = V::nibbles(v0, true);
      typename V::I lo1 = V::nibbles(v1, false), hi1 = V::nibbles(v1, true);
      add_high_bits(h, false, lo0, hi0);
      add_high_bits(h, true, lo1, hi1);  // codes 0..63
      h0 = V::dot_small(h0, lo0, ah + c);
      h1 = V::dot_small(h1, hi0, ah + c + 4);
      l0 = V::dot_small(l0, lo0, al + c);
      l1 = V::dot_small(l1, hi0, al + c + 4);
      h0 = V::dot_small(h0, lo1, ah + c + 8);
      h1 = V::dot_small(h1, hi1, ah + c + 12);
      l0 = V::dot_small(l0, lo1, al + c + 8);
      l1 = V::dot_small(l1, hi1, al + c + 12);
    }
  } else {
#if !((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__))
    if constexpr (std::is_same<V, Ymm>::value) {
      // without VNNI, 8-bit codes u = c + 128: sum u * a = sum c * a + 128 * sum a, and c * a in one vpmaddubsw as
      // |c| * (a with c's sign) (pair sums <= 2 * 128 * 127 < 2^15, llama.cpp's AVX2 Q8_0 trick) — the same integers
      // as dot_u8s8's two nibbles, in 4 instructions a product instead of 10, the sign flips shared by both digits
      const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
#pragma GCC unroll 4
      for (int64_t c = cb; c < ce; c += 8) {
        V::prefetch(c0, c1, c * 8 + PREFETCH_BYTES);
        const __m256i s0 = _mm256_xor_si256(V::codes(c0, c1, c * 8), flip);
        const __m256i s1 = _mm256_xor_si256(V::codes(c0, c1, c * 8 + 32), flip);
        const __m256i u0 = _mm256_abs_epi8(s0), u1 = _mm256_abs_epi8(s1);
        auto prod = [&](__m256i u, __m256i sg, const int8_t* p) {
          return _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(bcast4(p), sg)), ones);
        };
        h0 = _mm256_add_epi32(h0, prod(u0, s0, ah + c));
        h1 = _mm256_add_epi32(h1, prod(u1, s1, ah + c + 4));
        l0 = _mm256_add_epi32(l0, prod(u0, s0, al + c));
        l1 = _mm256_add_epi32(l1, prod(u1, s1, al + c + 4));
      }
      int32_t hs = 0, ls = 0;
      for (int64_t j = cb / SUB; j < ce / SUB; ++j) hs += a.hi_sum[j], ls += a.lo_sum[j];
      h0 = _mm256_add_epi32(h0, _mm256_set1_epi32(128 * hs));
      l0 = _mm256_add_epi32(l0, _mm256_set1_epi32(128 * ls));
      return V::to_float(h0, h1, l0, l1);
    }
#endif
#pragma GCC unroll 8
    for (int64_t c = cb; c < ce; c += 8) {
      V::prefetch(c0, c1, c * 8 + PREFETCH_BYTES);
      const typename V::I v0 = V::codes(c0, c1, c * 8), v1 = V::codes(c0, c1, c * 8 + 32);
      h0 = V::dot(h0, v0, ah + c);
      h1 = V::dot(h1, v1, ah + c + 4);
      l0 = V::dot(l0, v0, al + c);
      l1 = V::dot(l1, v1, al + c + 4);
    }
  }
  return V::to_float(h0, h1, l0, l1);
}

// out[0..V::ROWS) = sum_k w[row, k] * x[k] for the rows of tile c0 (scales s0, minimums m0) and, where V holds two,
// tile c1 (s1, m1). (One activation digit, llama.cpp's precision, was measured for Gemma 3's 262k-row output head
// too: 5% faster, since the table is read from DRAM at that speed either way; not kept.)
template <int BITS, int G, typename T, typename V>
void tile_dot(const uint8_t* c0, const uint8_t* c1, const T* s0, const T* m0, const T* s1, const T* m1, float factor,
              const Act& a, int64_t k, float* out) {
  const int64_t groups = k / G;
  const float* sums = a.sum.data();
  // the next tiles' scales and minimums: two more streams beside the codes
  const int64_t scale_bytes = groups * TILE * static_cast<int64_t>(sizeof(T));
  for (int64_t i = 1; i <= V::ROWS / TILE; ++i)
    for (int64_t b = 0; b < scale_bytes; b += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(s1 + i * groups * TILE) + b, _MM_HINT_T0);
      if (m0) _mm_prefetch(reinterpret_cast<const char*>(m1 + i * groups * TILE) + b, _MM_HINT_T0);
    }
  typename V::F acc = V::fzero(), acc_min = V::fzero();  // two chains of FMAs, not one
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c = g * G;
    const typename V::F s = V::floats(s0, s1, g * TILE);
    if constexpr (G <= QK) {
      acc = V::fmadd(int_dot<BITS, V>(c0, c1, a, c, c + G), V::mul(s, V::set1(a.scale[c / QK])), acc);
    } else {  // a group of several activation blocks (AWQ / GPTQ's 128): each block's integers at its own scale
      typename V::F part = V::fzero();
      for (int64_t q = c; q < c + G; q += QK)
        part = V::fmadd(int_dot<BITS, V>(c0, c1, a, q, q + QK), V::set1(a.scale[q / QK]), part);
      acc = V::fmadd(part, s, acc);
    }
    float sum = sums[c / SUB];
    for (int64_t j = 1; j < G / SUB; ++j) sum += sums[c / SUB + j];
    if (m0) acc_min = V::fmadd(V::floats(m0, m1, g * TILE), V::set1(sum), acc_min);
    else acc_min = V::fmadd(s, V::set1(factor * sum), acc_min);
  }
  V::store(out, acc, acc_min);
}
#else
// out[0..8) = sum_k w[row, k] * x[k] for the 8 rows of one tile, in plain loops (no AVX2 here)
template <int BITS, int G, typename T>
void tile_dot_scalar(const uint8_t* codes, const T* scale, const T* mins, float factor, const Act& a, int64_t k,
                     float* out) {
  const int64_t groups = k / G;
  const float* sums = a.sum.data();
  for (int64_t r = 0; r < TILE; ++r) {
    float total = 0.f;
    for (int64_t g = 0; g < groups; ++g) {
      float part = 0.f;  // the group's products, each activation block (32) at its scale; times the weight scale
      for (int64_t c1 = g * G; c1 < (g + 1) * G; c1 += std::min<int64_t>(G, QK)) {
        int32_t ih = 0, il = 0;
        for (int64_t c = c1; c < c1 + std::min<int64_t>(G, QK); ++c) {
          const int32_t u = code_at(BITS, codes, r, c);
          ih += u * a.hi[c];
          il += u * a.lo[c];
        }
        if (G <= QK) part = float(ih * int32_t(DIGIT_BASE) + il) * (to_f32(scale[g * TILE + r]) * a.scale[c1 / QK]);
        else part += float(ih * int32_t(DIGIT_BASE) + il) * a.scale[c1 / QK];
      }
      if (G > QK) part *= to_f32(scale[g * TILE + r]);
      float sum = sums[g * G / SUB];
      for (int64_t j = 1; j < G / SUB; ++j) sum += sums[g * G / SUB + j];
      total += part + (mins ? to_f32(mins[g * TILE + r]) : factor * to_f32(scale[g * TILE + r])) * sum;
    }
    out[r] = total;
  }
}
#endif


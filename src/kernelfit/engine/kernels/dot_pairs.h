// dot_kernels.h's tile products on two tiles at once (16 rows: a 512-bit register holds both tiles' lanes), where the
// compiler targets AVX-512 VNNI: the same integer sums and the same float operations on each lane as tile_dot's, so
// the same bits, in half the instructions a row.
//
// Why: the exact two-digit products cost two vpdpbusd a code per activation row; on 256-bit registers a step of 8
// rows (the server's batched decode) was compute-bound — on a Qwen2.5-1.5B-shaped file 8 rows cost about 7 one-row
// steps. Included inside dot_kernels.h's namespace dot, after tile_dot and before mm_tiles.
#pragma once

#if defined(KF_DOT_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define KF_DOT_PAIRS 1

inline __m512i both_tiles(const uint8_t* a, const uint8_t* b) {  // 32 bytes of each tile: tile t low, t + 1 high
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
}

inline __m512 both_floats(__m256 a, __m256 b) { return _mm512_insertf32x8(_mm512_castps256_ps512(a), b, 1); }

// int_dot's integer products over columns cb..ce for tiles c0 and c1 (16 rows as float lanes)
template <int BITS>
inline __m512 int_dot_pair(const uint8_t* c0, const uint8_t* c1, const Act& a, int64_t cb, int64_t ce) {
  __m512i h0 = _mm512_setzero_si512(), h1 = h0, l0 = h0, l1 = h0;
  const int8_t* ah = a.hi.data();
  const int8_t* al = a.lo.data();
  auto b4 = [](const int8_t* p) {
    int32_t w;
    std::memcpy(&w, p, 4);
    return _mm512_set1_epi32(w);
  };
  if (code_bits(BITS) == 4) {
    const __m512i nib = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 4
    for (int64_t c = cb; c < ce; c += 8) {
      _mm_prefetch(reinterpret_cast<const char*>(c0 + c * 4 + PREFETCH_BYTES), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c1 + c * 4 + PREFETCH_BYTES), _MM_HINT_T0);
      const __m512i v = both_tiles(c0 + c * 4, c1 + c * 4);
      const __m512i lo = grid_bytes<BITS>(_mm512_and_si512(v, nib));
      const __m512i hi = grid_bytes<BITS>(_mm512_and_si512(_mm512_srli_epi16(v, 4), nib));
      h0 = _mm512_dpbusd_epi32(h0, lo, b4(ah + c));
      h1 = _mm512_dpbusd_epi32(h1, hi, b4(ah + c + 4));
      l0 = _mm512_dpbusd_epi32(l0, lo, b4(al + c));
      l1 = _mm512_dpbusd_epi32(l1, hi, b4(al + c + 4));
    }
  } else if (BITS == 6) {
    const __m512i nib = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 2
    for (int64_t c = cb; c < ce; c += 16) {
      const int64_t n0 = nibble_offset(6, c), n1 = nibble_offset(6, c + 8), hp = pairs_offset(c);
      _mm_prefetch(reinterpret_cast<const char*>(c0 + n0 + PREFETCH_BYTES), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c0 + n0 + PREFETCH_BYTES + 64), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c1 + n0 + PREFETCH_BYTES), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c1 + n0 + PREFETCH_BYTES + 64), _MM_HINT_T0);
      const __m512i v0 = both_tiles(c0 + n0, c1 + n0), v1 = both_tiles(c0 + n1, c1 + n1);
      const __m512i h = both_tiles(c0 + hp, c1 + hp);
      __m512i lo0 = _mm512_and_si512(v0, nib), hi0 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), nib);
      __m512i lo1 = _mm512_and_si512(v1, nib), hi1 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), nib);
      add_high_bits(h, false, lo0, hi0);
      add_high_bits(h, true, lo1, hi1);
      h0 = _mm512_dpbusd_epi32(h0, lo0, b4(ah + c));
      h1 = _mm512_dpbusd_epi32(h1, hi0, b4(ah + c + 4));
      l0 = _mm512_dpbusd_epi32(l0, lo0, b4(al + c));
      l1 = _mm512_dpbusd_epi32(l1, hi0, b4(al + c + 4));
      h0 = _mm512_dpbusd_epi32(h0, lo1, b4(ah + c + 8));
      h1 = _mm512_dpbusd_epi32(h1, hi1, b4(ah + c + 12));
      l0 = _mm512_dpbusd_epi32(l0, lo1, b4(al + c + 8));
      l1 = _mm512_dpbusd_epi32(l1, hi1, b4(al + c + 12));
    }
  } else {
#pragma GCC unroll 8
    for (int64_t c = cb; c < ce; c += 8) {
      _mm_prefetch(reinterpret_cast<const char*>(c0 + c * 8 + PREFETCH_BYTES), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c1 + c * 8 + PREFETCH_BYTES), _MM_HINT_T0);
      const __m512i v0 = both_tiles(c0 + c * 8, c1 + c * 8), v1 = both_tiles(c0 + c * 8 + 32, c1 + c * 8 + 32);
      h0 = _mm512_dpbusd_epi32(h0, v0, b4(ah + c));
      h1 = _mm512_dpbusd_epi32(h1, v1, b4(ah + c + 4));
      l0 = _mm512_dpbusd_epi32(l0, v0, b4(al + c));
      l1 = _mm512_dpbusd_epi32(l1, v1, b4(al + c + 4));
    }
  }
  const __m512i ih = _mm512_add_epi32(h0, h1), il = _mm512_add_epi32(l0, l1);
  return _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(ih, 7), il));
}

// tile_dot for tiles c0 (scales s0, minimums m0) and c1 (s1, m1): out[0..16)
template <int BITS, int G, typename T>
void tile_dot_pair(const uint8_t* c0, const uint8_t* c1, const T* s0, const T* m0, const T* s1, const T* m1,
                   float factor, const Act& a, int64_t k, float* out) {
  const int64_t groups = k / G;
  const float* sums = a.sum.data();
  const int64_t scale_bytes = groups * TILE * static_cast<int64_t>(sizeof(T));
  for (int64_t b = 0; b < scale_bytes; b += 64) {  // the next pair's scales and minimums
    _mm_prefetch(reinterpret_cast<const char*>(s1 + groups * TILE) + b, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(s1 + 2 * groups * TILE) + b, _MM_HINT_T0);
    if (m0) _mm_prefetch(reinterpret_cast<const char*>(m1 + groups * TILE) + b, _MM_HINT_T0);
    if (m0) _mm_prefetch(reinterpret_cast<const char*>(m1 + 2 * groups * TILE) + b, _MM_HINT_T0);
  }
  __m512 acc = _mm512_setzero_ps(), acc_min = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c = g * G;
    const __m512 s = both_floats(load8(s0 + g * TILE), load8(s1 + g * TILE));
    if constexpr (G <= QK) {
      acc = _mm512_fmadd_ps(int_dot_pair<BITS>(c0, c1, a, c, c + G), _mm512_mul_ps(s, _mm512_set1_ps(a.scale[c / QK])),
                            acc);
    } else {
      __m512 part = _mm512_setzero_ps();
      for (int64_t q = c; q < c + G; q += QK)
        part = _mm512_fmadd_ps(int_dot_pair<BITS>(c0, c1, a, q, q + QK), _mm512_set1_ps(a.scale[q / QK]), part);
      acc = _mm512_fmadd_ps(part, s, acc);
    }
    float sum = sums[c / SUB];
    for (int64_t j = 1; j < G / SUB; ++j) sum += sums[c / SUB + j];
    if (m0) acc_min = _mm512_fmadd_ps(both_floats(load8(m0 + g * TILE), load8(m1 + g * TILE)), _mm512_set1_ps(sum), acc_min);
    else acc_min = _mm512_fmadd_ps(s, _mm512_set1_ps(factor * sum), acc_min);
  }
  _mm512_storeu_ps(out, _mm512_add_ps(acc, acc_min));
}

#endif

// LFM2's gated short convolution (transformers Lfm2ShortConv, llama.cpp build_shortconv_block), between its in_proj
// and out_proj products: per row, in_proj's output is three parts B, C, x of `h` values each; y = C * conv(B * x),
// where conv is a causal depthwise convolution of L taps a channel over the positions (tap L - 1 the current one).
//
// Its state is the last L - 1 values of B * x a channel, rows oldest first (llama.cpp's conv state, transformers'
// conv_state): float32 [L - 1, h] a layer. A call over t consecutive positions reads it, and leaves it holding the
// call's last L - 1 positions (a prompt shorter than that keeps the older rows needed). The state is a sequence's,
// like its KV cache; it is not positional, so a caller that moves a sequence back restores a copy taken at that
// position (engine/recurrent.py).
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

namespace shortconv {

// Channels a thread takes at least: below ~512 the fork costs more than the few multiply-adds a channel.
constexpr int64_t CHANNEL_GRAIN = 512;

// bcx: float32 rows [t, 3h] (B, C, x); w: float32 [h, L] (the taps, oldest position first); state: float32 [L-1, h],
// updated; out: float32 [t, h]. Each channel's arithmetic is sequential over the taps, oldest first, whatever t is:
// a prompt's rows get what one decode step a row gets, bit for bit.
inline void run(const float* bcx, int64_t t, int64_t h, const float* w, int64_t L, float* state, float* out) {
  at::parallel_for(0, h, CHANNEL_GRAIN, [&](int64_t c0, int64_t c1) {
    std::vector<float> win(L);
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t j = 0; j < L - 1; ++j) win[j] = state[j * h + c];
      const float* taps = w + c * L;
      for (int64_t r = 0; r < t; ++r) {
        const float* row = bcx + r * 3 * h;
        win[L - 1] = row[c] * row[2 * h + c];  // B * x
        float acc = 0.f;
        for (int64_t j = 0; j < L; ++j) acc += taps[j] * win[j];
        out[r * h + c] = row[h + c] * acc;  // C * conv
        for (int64_t j = 0; j < L - 1; ++j) win[j] = win[j + 1];
      }
      for (int64_t j = 0; j < L - 1; ++j) state[j * h + c] = win[j];
    }
  });
}

}  // namespace shortconv

#pragma once

// Step's recurrent layers' members (LFM2's short convolution, Qwen3.5's Gated DeltaNet, Granite 4.0-H's Mamba-2;
// declared and described in step.cpp's Step) and where each layer's state starts. Included by step.cpp after Step.

inline Tensor Step::mamba_rows(const Tensor& p_in, int64_t li, float* st) const {
  const Tensor p = p_in.to(at::kFloat).contiguous();
  const auto& nm = norms[li];
  const mamba::Dims m = mamba_dims(li);
  TORCH_CHECK(p.size(1) == m.inputs() && slot(li, MAMBA_D), "Mamba-2: in_proj gives ", p.size(1),
              " values a row, its sizes ", m.inputs(), " (and D)");
  Tensor y = at::empty({p.size(0), m.inner()}, p.options());
  mamba::rows(p.data_ptr<float>(), p.size(0), p.size(1), m, nm[8].data_ptr<float>(), slot(li, MAMBA_CONV_BIAS),
              nm[9].data_ptr<float>(), nm[10].data_ptr<float>(), slot(li, MAMBA_D), nm[11].data_ptr<float>(), eps, st,
              y.data_ptr<float>());
  return y;
}

inline Tensor Step::short_conv(const Tensor& bcx_in, int64_t li, float* st) const {
  const Tensor bcx = bcx_in.to(at::kFloat).contiguous(), taps = norms[li][8];
  const int64_t t = bcx.size(0), h = hidden();
  Tensor y = at::empty({t, h}, bcx.options());
  shortconv::run(bcx.data_ptr<float>(), t, h, taps.data_ptr<float>(), taps.size(1), st, y.data_ptr<float>());
  return y;
}

inline Tensor Step::delta_rows(const Tensor& p_in, int64_t li, float* st) const {
  const Tensor p = p_in.to(at::kFloat).contiguous();
  const auto& nm = norms[li];
  const delta::Dims m = dims(li);
  TORCH_CHECK(p.size(1) == m.inputs(), "Gated DeltaNet: the layer's products give ", p.size(1),
              " values a row, its sizes ", m.inputs());
  Tensor y = at::empty({p.size(0), m.value_dim()}, p.options());
  delta::rows(p.data_ptr<float>(), p.size(0), p.size(1), m, nm[8].data_ptr<float>(), nm[9].data_ptr<float>(),
              nm[10].data_ptr<float>(), nm[11].data_ptr<float>(), eps, st, y.data_ptr<float>());
  return y;
}

inline std::vector<int64_t> Step::state_offsets() const {
  std::vector<int64_t> off(norms.size() + 1, 0);
  for (size_t li = 0; li < norms.size(); ++li) {
    const int64_t l = static_cast<int64_t>(li);
    const int64_t n = conv_layer(l) ? (norms[l][8].size(1) - 1) * hidden() : delta_layer(l) ? dims(l).state_floats()
                      : mamba_layer(l) ? mamba_dims(l).state_floats()
                                                                                             : 0;
    off[li + 1] = off[li] + n;
  }
  return off;
}

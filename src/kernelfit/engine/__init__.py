"""kernelfit's own CPU engine: an architecture recipe, weight readers per format (gguf/), the C++ kernels
(kernels/), the reference model and the runner. Below loader/, which hands its runner out."""

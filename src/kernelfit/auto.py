"""`import kernelfit.auto` installs kernelfit.guard(): FlashAttention demands are redirected
wherever FlashAttention cannot run. Import it before the code that loads the model."""

from .dispatch.guard import guard

REDIRECTED = guard()

"""hardware: the vocabulary of machines — `Capability` (a comparable compute capability) and
`Machine` / `Device` / `Cpu` / `Software` as plain data. The lowest stage: imports nothing of kernelfit
but `errors`."""

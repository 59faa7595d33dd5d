"""The model-level fast path on the GPU: the fused HSTU built on the attention kernels,
and its CUDA-graphed prefill, extend and rank."""

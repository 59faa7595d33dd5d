"""Fused HSTU attention for the GPU: Triton kernels, their fp32 reference, the cached path using them."""

from helmrec.kernels.attention import candidate_attention, causal_attention, supported

__all__ = ["candidate_attention", "causal_attention", "supported"]

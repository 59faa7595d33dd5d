"""Package data: the Triton model repository (config.pbtxt and thin model.py shims per model).

Triton reads only the model folders; this file makes the repository installable as `helmrec.model_repository`.
"""

"""Triton-facing glue: what each model of model_repository/ does with a request.

These modules import `triton_python_backend_utils`, so they run inside the
Python backend stub; the rules and the network they call are importable and
unit-tested without Triton (schema.py, ../hstu, ../pool).
"""

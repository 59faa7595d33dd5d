"""helmrec: HSTU generative-recommender serving on NVIDIA Triton with one adaptive HBM pool.

One import root over the repository's folders (see pyproject.toml): `helmrec` is
python_backend/, with `helmrec.allocator`, `helmrec.router`, `helmrec.load` and the
packaged `helmrec.model_repository` beside it. Layers, lowest first (tests/test_layers.py
holds the rule): schema, resources, workload, kernels -> hstu -> fastpath -> pool ->
serving; allocator and router beside them; launcher; load; cli on top.
Nothing is imported here, so `import helmrec.router` stays torch-free.
"""

"""Benchmarks, all in one place: the cluster bench behind `helmrec bench` and the
component benches (`helmrec bench-gpu`, `bench-pool`, `bench-router`, `bench-serving`,
`bench-model`). Each prints a table whose last line is its headline ratio."""

"""The bottom layer: what every other package may use and which imports none of them.

errors (BenchError), io (atomic writes), checkpoint (safe load / atomic save), engine (the one
training loop), data (embedded photos, image folders, transforms), distributed, determinism,
cpu_tuning, results (the row schema and the append-only store).
"""

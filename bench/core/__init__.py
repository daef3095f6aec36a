"""The bottom layer: what every other package may use and which imports none of them.

errors (BenchError and its one-line kinds), io (atomic writes), checkpoint (safe load / atomic save),
npz (bounded .npz reads), options (the options every training command shares), optional (the dense
libraries of the full set-up), results (the row schema and the append-only store), workdir (the one
work-folder service: newest readable checkpoint, settings guard, start fresh, own-temp clean-up,
schedule scaling), run_record, distributed (process groups, device per rank, bounded collectives),
device (device and precision), determinism, cpu_tuning, data / images / transforms / digits (the
embedded photos, the digits, image folders). The training engine: engine (``fit``), trainer,
train_config, train_state, samplers, optim, fsdp.
"""

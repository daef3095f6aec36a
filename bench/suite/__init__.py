"""Suite files: which initialisations to transfer to which tasks, with which seeds.

A suite is a YAML file (``bench/suites/demo.yaml`` is the smallest complete example)::

    name: demo                   # goes into every run_id and results row (key 'suite')
    arch: vit_demo_patch8        # ViT size for every init (an init may set its own 'arch')
    seeds: [0]                   # transfer seeds: every (init, task[, k]) runs once per seed;
                                 #   pretraining runs once per init (its own pretrain.seed)
    inits:                       # <label>: how to get the weights; the label names the cells
      random: {}                 #   nothing: random init (only for inits that need no checkpoint)
      mae:
        pretrain: {method: mae, steps: 300, batch_size: 32}     # pretrain here, then transfer
      supervised:
        checkpoint: ckpt/deit_base_patch16_224.pth              # a file (official or our own)
      mae_ratio50:                                              # a second MAE, another label
        init: mae                #   registry init (default: the label); rows carry this name
        pretrain: {method: mae, mask_ratio: 0.5, steps: 300}
    tasks:                       # <label>: a transfer task; the label names the cells
      coco:
        task: coco               #   a task of tasks/registry.py (default: the label)
        protocol: maskrcnn_fpn   #   one of the task's protocols (default: its first)
        generate: {n_train: 16, n_val: 8, image_size: [64, 64]}  # make the small generated set
        # data: /datasets/coco   #   ... or read a dataset on disk (exactly one of the two)
        config: smoke            #   the task's config name or file, or {<arch>: config, ...}
        iters: 100               #   the task's own keys (TaskSpec.suite_keys): coco and ade20k
                                 #   take iters; classification epochs, batch_size, k, amp
      folder_partial:
        task: folder
        protocol: partial
        k: [0, 1, 2]             #   partial: numbers of fine-tuned last blocks
        epochs: 3                #   classification: epochs (and batch_size, amp)
        generate: {n_train_per_class: 20, image_size: 32}

``pretrain`` takes ``method`` (mae, mocov3, beit, supervised; default: the init), ``data``
(``embedded`` or an image folder), ``img_size``, ``epoch_size``, every field of the shared engine's
``TrainConfig`` (steps, epochs, batch_size, blr, warmup_steps, ckpt_every, seed, ...) and the
method's own options (MAE: ``mask_ratio``; ``target``: ``pixel_norm`` (the default) | ``pixel`` |
``tokens``, the paper's Table 7, with ``norm_pix_loss`` its older switch between the two pixel
targets; for ``tokens`` also ``vocab_size``, ``tokenizer`` (a ``tokenizer.pth`` to reuse) and
``tokenizer_train``, as for BEiT). An init may also carry ``extra``
(JSON scalars written into each of its rows' ``extra``; never a field the run measures or the runner
writes, ``RESERVED_EXTRA``; ``mask_ratio`` there takes part in the run id) and
``trust_checkpoint: true`` for official files that need full unpickling. Any number of inits may
name one method: the label (the key) keeps their cells, run ids and table rows apart. Relative paths (``checkpoint``, ``data``, config files) are relative to the directory
the command runs in.

A task may also carry ``trust_config: true`` (read a ``.py`` config from outside the package),
``amp`` (mixed precision; ``bf16`` is its old name), ``floors`` (raw-pixel floor rows; default: on
for the digits and generated classification sets), ``search: {lr: [..], weight_decay: [..]}`` (a
grid, the same for every init unless ``unequal_grid_reason`` says why; an init may replace it per
task with ``inits.<label>.search: {<task label>: {...}}``) and ``select_on: heldout | val``; see
``docs/suites.md`` for the search and the limits (aliases, list lengths, finite numbers, the size
of generated sets).

A suite does not say whether its numbers compare with the paper's: each row's checkpoint provenance,
data (generated or the paper's dataset) and deviations decide it (``bench.runner.loop.paper_marks``).
An older file's ``scale:`` key is ignored with a one-line note.

``load_suite`` checks everything before anything runs: an unknown key, init, task, protocol or a
value of the wrong type is a ``BenchError`` naming the file, the key and the allowed values.
Whether files exist is checked by ``bench run`` (``bench.runner.check_inputs``, also with
``--dry-run``), not here, so a suite loads on a machine without its datasets.
"""

from bench.suite.checks import LABEL_RE, MAX_QUOTE, MAX_SEEDS, MAX_YAML_VALUES, _quote
from bench.suite.load import bundled_suites, load_suite, resolve_suite_path
from bench.suite.model import (
    MAX_ENTRIES,
    MAX_GENERATED_BYTES,
    MAX_GENERATED_COUNT,
    MAX_GENERATED_SIDE,
    MAX_GRID,
    PRETRAIN_METHODS,
    RESERVED_EXTRA,
    SELECT_ON,
    SUITES_DIR,
    InitEntry,
    Suite,
    TaskEntry,
    pretrainer_fn,
)

__all__ = [
    "LABEL_RE",
    "MAX_ENTRIES",
    "MAX_GENERATED_BYTES",
    "MAX_GENERATED_COUNT",
    "MAX_GENERATED_SIDE",
    "MAX_GRID",
    "MAX_QUOTE",
    "MAX_SEEDS",
    "MAX_YAML_VALUES",
    "PRETRAIN_METHODS",
    "RESERVED_EXTRA",
    "SELECT_ON",
    "SUITES_DIR",
    "InitEntry",
    "Suite",
    "TaskEntry",
    "_quote",
    "bundled_suites",
    "load_suite",
    "pretrainer_fn",
    "resolve_suite_path",
]

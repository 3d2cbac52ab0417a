"""The benchmark harness: one training engine, a method registry, leaderboard specs, a runner.

- ``engine.py``: the one training loop every method uses (data as tensors on the device, AMP,
  channels_last, on-device augmentation, seeding, early stopping, checkpoints, loss logging).
- ``models.py``: the networks (GoogLeNet, ResNet-50, two-stream and early-fusion GoogLeNet).
- ``methods.py``: the method protocol and the registry; methods live one per file in
  ``methods/`` (proposed) and ``baselines/`` (comparators) and are found automatically.
- ``data.py``: a dataset split as normalised tensors on a device.
- ``source.py``: source models (ResNet-50 trained on a cloud-free source domain).
- ``spec.py``: leaderboard specs (``catalogs/leaderboards/*.yaml``), validated.
- ``results.py``: the long results table, one atomic file per finished run.
- ``runner.py``: expands a spec into runs, skips finished ones, runs the rest.
- ``cost.py``: the cost rows of a method's whole pipeline (train, predict, cloud-mask seconds).
- ``bundle.py``: results bundles (the table, the spec as run, fingerprints) and comparing two.
- ``render.py``: Markdown/HTML tables and plots from the results.
"""

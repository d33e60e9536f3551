"""Training and evaluation: losses, schedulers, metrics, checkpoints, distributed helpers and the loops.

The engine joins ``tsn.data`` and ``tsn.models``; it receives normalised-on-device clips in the
layout of ``tsn.layout`` and keeps per-epoch statistics on the device until one sync at epoch end.
"""

"""Certified robust training: IBP-based training with the short warmup of Shi et al.
("Fast Certified Robust Training with Short Warmup", NeurIPS 2021).

:func:`training.run.train` (``certify.train``) runs a whole training from a
:class:`~training.config.TrainConfig`; presets give the seed's settings
(:mod:`training.presets`). The other modules each do one job: eps schedules
(:mod:`training.schedulers`), IBP initialization (:mod:`training.init`), the warmup
regularizers (:mod:`training.regularizers`), losses (:mod:`training.losses`), data
splits, batches and augmentation (:mod:`training.data`), one epoch of training or
validation (:mod:`training.loop`), checkpoints with the state to resume from
(:mod:`training.checkpointing`) and the ONNX export of a trained model
(:mod:`training.export`).

Bounds come from :mod:`certify.bounds` (the interval pass, and auto_LiRPA for
CROWN-IBP), the per-epoch log is written by :mod:`reports.training_log`, and the final
evaluation of the selected model is :func:`certify.evaluate`.
"""

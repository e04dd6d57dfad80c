"""Certified robust training: IBP-based training with the short warmup of Shi et al.
("Fast Certified Robust Training with Short Warmup", NeurIPS 2021), and the methods
built on it since (SABR, TAPS and STAPS, the expressive losses).

:func:`training.run.train` (``certify.train``) runs a whole training from a
:class:`~training.config.TrainConfig`; presets give the seed's and the papers' settings
(:mod:`training.presets`). The other modules each do one job: the methods' names
(:mod:`training.methods`), eps schedules (:mod:`training.schedulers`), IBP
initialization (:mod:`training.init`), the warmup regularizers
(:mod:`training.regularizers`), losses (:mod:`training.losses`), the attack inside a
step (:mod:`training.attack`), the losses of the methods with an attack
(:mod:`training.expressive`, :mod:`training.sabr`, :mod:`training.taps`, one entry
each in :mod:`training.objectives`), data splits, batches and augmentation
(:mod:`training.data`), one epoch of training or validation (:mod:`training.loop`),
the selection of the best epoch (:mod:`training.selection`), checkpoints with the
state to resume from (:mod:`training.checkpointing`) and the ONNX export of a trained
model (:mod:`training.export`).

Bounds come from :mod:`certify.bounds` (the interval pass, and auto_LiRPA for
CROWN-IBP), the per-epoch log is written by :mod:`reports.training_log`, and the final
evaluation of the selected model is :func:`certify.evaluate`.
"""

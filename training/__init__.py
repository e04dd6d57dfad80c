"""Certified robust training: IBP-based training with the short warmup of Shi et al.
("Fast Certified Robust Training with Short Warmup", NeurIPS 2021).

The modules each do one job: eps schedules (:mod:`training.schedulers`), IBP
initialization (:mod:`training.init`), interval bound propagation
(:mod:`certify.bounds.interval`), the warmup regularizers (:mod:`training.regularizers`),
losses (:mod:`training.losses`), one epoch of training or validation
(:mod:`training.loop`), checkpoints (:mod:`training.checkpointing`), presets
(:mod:`training.presets`), the per-epoch CSV log (:mod:`reports.training_log`) and the
orchestration of a whole run (:mod:`training.run`).
"""

"""The floor of certify: what every other package needs and nothing of the project.

Typed errors (:mod:`~certify.core.errors`), eps parsing (:mod:`~certify.core.eps`), the
eps-ball clipped to the pixel box (:mod:`~certify.core.eps_box`), what each data set is
(:mod:`~certify.core.datasets`), devices and exact float32 (:mod:`~certify.core.devices`),
atomic writes (:mod:`~certify.core.atomic_files`), the CSV files certify reads and writes
(:mod:`~certify.core.csv_files`), the share of a ``torchrun`` job (:mod:`~certify.core.shard`)
and the allocator setting of long runs (:mod:`~certify.core.allocator`). Modules here import
no other part of the project.
"""

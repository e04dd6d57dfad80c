"""The whole evaluation of a model as ``certify eval`` runs it, as a Python verb.

:func:`~certify.pipeline.evaluate.evaluate` loads the model (a path or an ``nn.Module``)
and the data, shards the images under ``torchrun``, evaluates, checks soundness and
returns an :class:`~certify.pipeline.result.EvalResult`, which renders the table and
writes the CSV files. It is exported as ``certify.evaluate``.
"""

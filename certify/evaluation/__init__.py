"""Evaluation of a model on images in memory: clean predictions, the PGD attack
(:mod:`~certify.evaluation.attack`) and verified margins per bound method, as per-image
outcomes with their consistency check (:mod:`~certify.evaluation.outcomes`), computed in
chunks that fit in memory (:mod:`~certify.evaluation.images`).

No files, no data sets, no models read from disk: :mod:`certify.pipeline` does that.
"""

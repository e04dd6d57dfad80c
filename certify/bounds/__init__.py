"""Sound bounds of a network's outputs over an L_inf ball in the pixel box [0, 1].

The interval (IBP) engine written over the model's fx graph (:mod:`~certify.bounds.graph`,
:mod:`~certify.bounds.interval` and the modules it uses), the twin that bounds are taken
on (BatchNorm folded by :mod:`~certify.bounds.fusion`, dead ReLU units removed by
:mod:`~certify.bounds.pruning`), auto_LiRPA made to work on current torch
(:mod:`~certify.bounds.lirpa_compat`) and built in one place
(:mod:`~certify.bounds.lirpa`), and the bounders that evaluation and training call
(:mod:`~certify.bounds.bounder`, :mod:`~certify.bounds.margins`,
:mod:`~certify.bounds.training_bounders`), the table of bound methods
(:mod:`~certify.bounds.methods`), and complete verification by branch and bound
(:mod:`~certify.bounds.bab`). Imports :mod:`certify.core` and
:mod:`model_zoo` only.
"""

"""Complete verification by branch and bound on ReLU splits (the ``bab`` bound method).

An image whose margins CROWN and alpha-CROWN cannot prove is split into subdomains, each
fixing some unstable ReLUs active or inactive; every subdomain is bounded with
beta-CROWN (:mod:`~certify.bounds.bab.beta_crown`), the ones proven robust are dropped,
and the rest are split again (:mod:`~certify.bounds.bab.search`) on the neurons a
branching heuristic picks (:mod:`~certify.bounds.bab.branching`). The open subdomains
live in one batched store (:mod:`~certify.bounds.bab.domains`).

The search itself attacks nothing: the caller passes the function that looks for a
counterexample at the points the bounds point to (evaluation does, with PGD and a
float64 check of the original model).
"""

from certify.bounds.bab.search import BabOutcome, BabVerdict, branch_and_bound
from certify.bounds.options import BabLimits, BabOptions, Branching

__all__ = ["BabLimits", "BabOptions", "BabOutcome", "BabVerdict", "Branching", "branch_and_bound"]

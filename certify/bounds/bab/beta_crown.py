"""beta-CROWN: bounds of the margins over a batch of subdomains of one image.

auto_LiRPA 0.3 propagates the linear bounds backward through the network; this module
holds everything else. The intermediate bounds of each subdomain are fixed (the root's
alpha-CROWN or CROWN bounds intersected with IBP's, tightened by the subdomain's splits), so one
backward pass from the margins bounds a whole batch of subdomains. The lower slopes of
the unstable ReLUs (alpha) and the multipliers of the split constraints (beta, one per
split, >= 0) are optimized per subdomain and per margin by projected Adam, as alpha- and
beta-CROWN do; every iterate is a sound bound, so each margin keeps the best one seen.

The split constraint ``s * z >= 0`` (s = +1 active, -1 inactive) enters the Lagrangian as
``- beta * s * z``: auto_LiRPA's ReLU adds it to the coefficient of its input when
``enable_beta_crown`` is on and the ReLU carries ``sparse_beta``, ``sparse_beta_loc`` and
``sparse_beta_sign``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from certify.bounds.alpha_crown import optimized_margins
from certify.bounds.bab.domains import Domains
from certify.bounds.lirpa import interval_reference, perturbed
from certify.core.devices import exact_float32
from certify.core.errors import ModelError


@dataclass(frozen=True)
class Optimization:
    """Projected Adam on the slopes and multipliers: steps and learning rates
    (alpha-beta-CROWN's defaults for branch and bound)."""

    iterations: int = 20
    lr_alpha: float = 0.1
    lr_beta: float = 0.05


class OutOfTime(Exception):
    """The caller's time limit ran out in the middle of an optimization."""


class SplitBounder:
    """Bounds subdomains of ReLU splits of one model, wrapped once by auto_LiRPA."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.relus = list(module.relus)
        others = [
            type(node).__name__ for node in module.optimizable_activations if node not in self.relus
        ]
        if others:
            raise ModelError(
                "bab splits ReLUs only; this model also has "
                + ", ".join(sorted(set(others)))
                + ": use alpha-crown as the last method"
            )
        self.pre = [relu.inputs[0] for relu in self.relus]
        self.final = module.final_name

    # -- the root ---------------------------------------------------------------------

    def root(
        self,
        image: Tensor,
        eps: float,
        spec: Tensor,
        opt: Optimization,
        optimized_intermediate: bool = False,
    ) -> Domains:
        """The whole eps-ball of each image as one subdomain: intermediate bounds by CROWN
        intersected with IBP, margins by alpha-CROWN over them. With
        ``optimized_intermediate`` the intermediate bounds are auto_LiRPA's alpha-CROWN
        ones (slopes optimized for every layer's bounds too: far tighter on deep networks,
        and far dearer), still intersected with IBP. Each image is bounded on its own,
        whatever the batch."""
        box = perturbed(image, eps)
        with torch.no_grad(), exact_float32():
            self._plain()
            reference = interval_reference(self.module, image, eps, spec)
        warm: tuple[Tensor, list[Tensor | None]] | None = None
        if optimized_intermediate:
            warm = self._optimized_intermediate(box, spec, reference, opt)
        else:
            with torch.no_grad(), exact_float32():
                self.module.compute_bounds(
                    x=(box,), C=spec, method="CROWN", bound_upper=False,
                    reference_bounds=reference,
                )  # fmt: skip
        with torch.no_grad():
            lower = [torch.max(p.lower, reference[p.name][0]).flatten(1) for p in self.pre]
            upper = [torch.min(p.upper, reference[p.name][1]).flatten(1) for p in self.pre]
            split_nodes = {p.name for p in self.pre}
            skip = {*self.module.root_name, self.final, *split_nodes}
            fixed = {
                node.name: (node.lower.detach(), node.upper.detach())
                for node in self.module._modules.values()
                if node.name not in skip and node.name in reference
                and isinstance(getattr(node, "lower", None), Tensor)
                and isinstance(getattr(node, "upper", None), Tensor)
            }  # fmt: skip
        margins, n = spec.shape[1], len(image)
        domains = Domains(
            lower=lower,
            upper=upper,
            # CROWN's own choice of slope, the start of alpha-CROWN.
            alpha=[
                (up > -lo).to(lo.dtype).expand(margins, -1, -1).clone()
                for lo, up in zip(lower, upper, strict=True)
            ],  # fmt: skip
            split_loc=[torch.zeros(n, 0, dtype=torch.long, device=image.device) for _ in lower],
            split_sign=[lo.new_zeros(n, 0) for lo in lower],
            beta=[lo.new_zeros(n, 0) for lo in lower],
            lb=torch.full((n, margins), -math.inf, device=image.device),
            fixed=fixed,
        )
        if warm is not None:
            domains.lb = warm[0]
            for i, slopes in enumerate(warm[1]):
                if slopes is not None and slopes.shape == domains.alpha[i].shape:
                    domains.alpha[i] = slopes
        self.optimize(image, eps, spec, domains, opt)
        return domains

    def _optimized_intermediate(
        self, box: Any, spec: Tensor, reference: dict, opt: Optimization
    ) -> tuple[Tensor, list[Tensor | None]]:
        """alpha-CROWN as certify's alpha-crown method runs it (batch-independent, over
        intermediate bounds intersected with IBP's). Returns its margin bounds and its
        slopes for the margins (the warm start of the root)."""
        lb, crown = optimized_margins(
            self.module, box, spec, reference, opt.iterations, opt.lr_alpha
        )
        slopes = []
        for relu in self.relus:
            found = getattr(relu, "alpha", {}).get(self.final)
            slopes.append(None if found is None else found[0].detach().flatten(2).clone())
            relu.alpha = {}
        return torch.maximum(lb, crown), slopes

    # -- bounding ---------------------------------------------------------------------

    def optimize(
        self,
        image: Tensor,
        eps: float,
        spec: Tensor,
        domains: Domains,
        opt: Optimization,
        out_of_time: Callable[[], bool] | None = None,
    ) -> None:
        """Optimize alpha and beta of ``domains`` in place; ``domains.lb`` becomes the best
        bound of each margin (never below what it was). ``out_of_time()`` is asked before
        every step; when it says yes, :class:`OutOfTime` is raised."""
        alphas = [a.clone().requires_grad_() for a in domains.alpha]
        betas = [b.clone().requires_grad_() for b in domains.beta]
        params = [{"params": alphas, "lr": opt.lr_alpha}]
        if any(b.numel() for b in betas):
            params.append({"params": [b for b in betas if b.numel()], "lr": opt.lr_beta})
        adam = torch.optim.Adam(params)
        best_lb = domains.lb.clone()
        best_alpha = [a.detach().clone() for a in alphas]
        best_beta = [b.detach().clone() for b in betas]
        for step in range(opt.iterations + 1):
            with torch.enable_grad(), exact_float32():
                lb = self._bound(image, eps, spec, domains, alphas, betas)
            better = lb.detach() > best_lb
            best_lb = torch.where(better, lb.detach(), best_lb)
            # Each margin keeps the slopes of its best bound; the multipliers, shared by
            # the margins, follow the worst margin.
            for kept, now in zip(best_alpha, alphas, strict=True):
                kept[better.T] = now.detach()[better.T]
            improved = better.gather(1, best_lb.argmin(dim=1, keepdim=True)).squeeze(1)
            for kept, now in zip(best_beta, betas, strict=True):
                kept[improved] = now.detach()[improved]
            # A fixed number of steps, whatever the rest of the batch: each subdomain's
            # bound is the same in any batch.
            if step == opt.iterations:
                break
            if out_of_time is not None and out_of_time():
                raise OutOfTime
            # Margins already proven no longer pull the shared multipliers.
            loss = -lb.clamp(max=0.0).sum() - 1e-3 * lb.sum()
            adam.zero_grad()
            loss.backward()
            adam.step()
            with torch.no_grad():
                for a in alphas:
                    a.clamp_(0.0, 1.0)
                for b in betas:
                    b.clamp_(min=0.0)
        domains.lb = best_lb
        domains.alpha = best_alpha
        domains.beta = best_beta

    def quick(self, image: Tensor, eps: float, spec: Tensor, domains: Domains) -> Tensor:
        """One pass with the slopes and multipliers as they are (FSB's estimate)."""
        with torch.no_grad(), exact_float32():
            return self._bound(image, eps, spec, domains, domains.alpha, domains.beta)

    def coefficients(self) -> list[Tensor]:
        """After a bound, the coefficient of every ReLU's output in each margin's lower
        bound, per layer (margins x B x n_i): what BaBSR scores with."""
        found = []
        for relu in self.relus:
            a = relu.lA
            if a is None:
                found.append(None)
                continue
            if not isinstance(a, Tensor):  # auto_LiRPA's Patches of a convolution
                a = a.to_matrix((a.patches.shape[1], *relu.output_shape[1:]))
            found.append(a.detach().flatten(2))
        return found

    def biases(self) -> list[Tensor | None]:
        """The bias of the affine layer before each ReLU (flattened), where it has one."""
        found = []
        for node in self.pre:
            bias = None
            if type(node).__name__ in ("BoundLinear", "BoundConv") and len(node.inputs) > 2:
                value = getattr(node.inputs[2], "param", None)
                if value is None:
                    value = getattr(node.inputs[2], "value", None)
                if value is not None:
                    shape = node.output_shape[1:]
                    bias = value.detach().reshape(-1, *[1] * (len(shape) - 1))
                    bias = bias.expand(*shape).flatten() if len(shape) > 1 else bias.flatten()
            found.append(bias)
        return found

    def primal_points(self, image: Tensor, eps: float, spec: Tensor, domains: Domains) -> Tensor:
        """For each subdomain, the corner of the input box where the linear lower bound of
        its worst margin is smallest: where a counterexample is most likely."""
        box = perturbed(image, eps)
        lower = box.ptb.x_L
        upper = box.ptb.x_U
        root = self.module.input_name[0]
        with torch.no_grad(), exact_float32():
            self._arm(domains, domains.alpha, domains.beta)
            _, _, a_dict = self.module.compute_bounds(
                x=(perturbed(_rows(image, len(domains)), eps),),
                C=_rows(spec, len(domains)),
                method="CROWN",
                bound_upper=False,
                intermediate_layer_bounds=self._intermediate(domains),
                return_A=True,
                needed_A_dict={self.final: [root]},
            )
            self._plain()
        a = a_dict[self.final][root]["lA"]  # B x margins x input
        worst = domains.lb.argmin(dim=1)
        row = a[torch.arange(len(domains)), worst]
        return torch.where(row > 0, lower, upper)

    # -- auto_LiRPA's state -----------------------------------------------------------

    def _bound(
        self,
        image: Tensor,
        eps: float,
        spec: Tensor,
        domains: Domains,
        alphas: list[Tensor],
        betas: list[Tensor],
    ) -> Tensor:
        b = len(domains)
        self._arm(domains, alphas, betas)
        try:
            lb, _ = self.module.compute_bounds(
                x=(perturbed(_rows(image, b), eps),),
                C=_rows(spec, b),
                method="CROWN",
                bound_upper=False,
                intermediate_layer_bounds=self._intermediate(domains),
            )
        finally:
            self._plain(keep_coefficients=True)
        return lb

    def _intermediate(self, domains: Domains) -> dict[str, list[Tensor]]:
        b = len(domains)
        fixed = {name: [_rows(lo, b), _rows(up, b)] for name, (lo, up) in domains.fixed.items()}
        return fixed | {
            node.name: [
                lo.view(b, *node.output_shape[1:]),
                up.view(b, *node.output_shape[1:]),
            ]
            for node, lo, up in zip(self.pre, domains.lower, domains.upper, strict=True)
        }

    def _arm(self, domains: Domains, alphas: list[Tensor], betas: list[Tensor]) -> None:
        """Hand the slopes and multipliers to auto_LiRPA's ReLUs for the next pass."""
        b = len(domains)
        any_beta = False
        for i, relu in enumerate(self.relus):
            shape = relu.output_shape[1:]
            alpha = alphas[i].view(alphas[i].shape[0], b, *shape)
            relu.alpha = {self.final: alpha.unsqueeze(0).expand(2, *alpha.shape)}
            relu.alpha_lookup_idx = {self.final: None}
            relu.alpha_indices = None
            relu.opt_stage = "opt"
            if betas[i].shape[1]:
                relu.sparse_beta = betas[i]
                relu.sparse_beta_loc = domains.split_loc[i]
                relu.sparse_beta_sign = domains.split_sign[i]
                any_beta = True
            else:
                relu.sparse_beta = None
        self.module.set_bound_opts(
            {"optimize_bound_args": {"enable_beta_crown": any_beta, "single_node_split": True}}
        )

    def _plain(self, keep_coefficients: bool = False) -> None:
        """Back to plain CROWN: no slopes or multipliers of ours left on the ReLUs."""
        for relu in self.relus:
            relu.opt_stage = None
            relu.sparse_beta = None
            if not keep_coefficients:
                relu.lA = None
        self.module.set_bound_opts({"optimize_bound_args": {"enable_beta_crown": False}})


def _rows(t: Tensor, b: int) -> Tensor:
    """``t`` for ``b`` subdomains: one image's (or spec's) shared, else one per subdomain."""
    return t if len(t) == b else t.expand(b, *t.shape[1:])

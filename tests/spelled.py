"""A PaiNN that reuses a base model's weights but spells each concept differently: the
rewriter must see through the spellings (and must NOT match the near-misses)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SPELLINGS = {
    "norm": ["norm", "sqrt_sum_pow", "sqrt_sum_mul", "linalg"],
    "direction": ["div", "mul_reciprocal", "mul_one_over"],
    "gaussian": ["schnetpack", "neg_div", "square_reversed"],
    "cutoff": ["schnetpack", "inplace_mask"],
    "linear": ["module", "functional", "matmul"],
    "scatter": ["index_add", "scatter_add", "index_add_inplace"],
    "gather": ["index", "index_select"],
}
NEAR_MISSES = ["gaussian_positive_exponent", "no_cutoff", "cutoff_wrong_period", "laplacian_basis", "sin_cutoff"]


class SpelledPaiNN(nn.Module):
    def __init__(self, base, **spelling):
        super().__init__()
        self.base = base
        self.cutoff = base.cutoff
        self.s = {k: v[0] for k, v in SPELLINGS.items()}
        self.miss = spelling.pop("near_miss", None)
        self.s.update(spelling)

    def _norm(self, r):
        how = self.s["norm"]
        if how == "norm":
            return torch.norm(r, dim=1, keepdim=True)
        if how == "sqrt_sum_pow":
            return torch.sqrt((r**2).sum(-1, keepdim=True))
        if how == "sqrt_sum_mul":
            return torch.sqrt(torch.sum(r * r, dim=1, keepdim=True))
        return torch.linalg.vector_norm(r, dim=-1, keepdim=True)

    def _basis(self, d):
        rb = self.base.radial_basis
        c, w = rb.offsets, rb.widths
        how = self.s["gaussian"]
        if self.miss == "gaussian_positive_exponent":
            return torch.exp(0.5 / w**2 * (d[..., None] - c) ** 2)
        if self.miss == "laplacian_basis":
            return torch.exp(-torch.abs(d[..., None] - c) / w)
        if how == "schnetpack":
            return torch.exp(-0.5 / torch.pow(w, 2) * torch.pow(d[..., None] - c, 2))
        if how == "neg_div":
            return torch.exp(-((d[..., None] - c) ** 2) / (2 * w**2))
        return torch.exp(torch.square(c - d.unsqueeze(-1)) * (-0.5 / w**2))

    def _cutoff(self, d):
        rc = self.base.cutoff_fn.cutoff
        if self.miss == "cutoff_wrong_period":
            return 0.5 * (torch.cos(d * math.pi / (1.1 * rc)) + 1.0) * (d < rc).to(d.dtype)
        if self.miss == "sin_cutoff":
            return 0.5 * (torch.sin(d * math.pi / rc) + 1.0) * (d < rc).to(d.dtype)
        fc = 0.5 * (torch.cos(d * math.pi / rc) + 1.0)
        if self.s["cutoff"] == "inplace_mask":
            fc *= (d < rc).to(d.dtype)
            return fc
        return fc * (d < rc).to(d.dtype)

    def _linear(self, phi):
        lin = self.base.filter_net
        how = self.s["linear"]
        if how == "module":
            return lin(phi)
        if how == "functional":
            return F.linear(phi, lin.weight, lin.bias)
        return phi @ lin.weight.T + lin.bias

    def _gather(self, t, idx):
        return t[idx] if self.s["gather"] == "index" else t.index_select(0, idx)

    def _scatter(self, like, idx, src):
        how = self.s["scatter"]
        if how == "index_add":
            return torch.zeros_like(like).index_add(0, idx, src)
        if how == "index_add_inplace":
            out = torch.zeros_like(like)
            out.index_add_(0, idx, src)
            return out
        full = idx.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
        return torch.zeros_like(like).scatter_add(0, full, src)

    def atomic_energies(self, positions, numbers, edge_index, shifts):
        b = self.base
        f = b.n_atom_basis
        idx_i, idx_j = edge_index[0], edge_index[1]
        r = self._gather(positions, idx_j) - self._gather(positions, idx_i) + shifts
        d = self._norm(r)
        how = self.s["direction"]
        u = r / d if how == "div" else (r * d.reciprocal() if how == "mul_reciprocal" else r * (1 / d))
        filters = self._linear(self._basis(d))
        if self.miss != "no_cutoff":
            filters = filters * self._cutoff(d)[..., None]
        w_list = [filters] * b.n_interactions if b.share_filters else torch.split(filters, 3 * f, dim=-1)
        q = b.embedding(numbers)[:, None]
        mu = torch.zeros(numbers.shape[0], 3, f, dtype=q.dtype, device=q.device)
        for inter, mix, w in zip(b.interactions, b.mixing, w_list):
            x = inter.interatomic_context_net(q)
            m = w * self._gather(x, idx_j)
            ms, mvr, mvv = torch.split(m, f, dim=-1)
            dq = self._scatter(q, idx_i, ms)
            dmu = self._scatter(mu, idx_i, mvr * u[..., None] + mvv * self._gather(mu, idx_j))
            q, mu = mix(q + dq, mu + dmu)
        return b.atomwise(q.squeeze(1), numbers)

    def forward(self, positions, numbers, edge_index, shifts):
        return self.atomic_energies(positions, numbers, edge_index, shifts).sum()[None]

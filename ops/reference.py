"""Reference backend: the fused ops' analytical forward and backward in chunked torch ops.

Runs on any device. Edges are processed in chunks of ``C`` edges, so that besides the
inputs and outputs the op holds only O(C * (K + F)) temporaries: no (E, 3F) tensor is ever
materialised. The backward is written in differentiable torch ops, so autograd can
differentiate it again (double backward, i.e. training on forces).

Memory bound (bytes, element size s; temporaries only, inputs/outputs excluded):
    forward   <= s * C * (2K + 16F + 8)
    backward  <= s * C * (3K + 30F + 24)
with C = chunk_edges(F, K, dtype) chosen so that this stays under ``CHUNK_BYTES``.
"""

from __future__ import annotations

from typing import Optional

import torch

from .radial import basis_values, cutoff_values

#: Budget for per-chunk temporaries of one fused op call. 16 MiB (C ~ 1070 edges at F=128,
#: float32): interleaved timings on Cu500 put 1024-2137 edges best, 534 ~15% and 256 ~55% slower.
CHUNK_BYTES = 16 * 2**20


def chunk_edges(n_features: int, n_rbf: int, dtype: torch.dtype, chunk_size: int = 0) -> int:
    """Edges per chunk: ``chunk_size`` if positive, else the most that fit in CHUNK_BYTES."""
    if chunk_size > 0:
        return chunk_size
    itemsize = torch.finfo(dtype).bits // 8
    per_edge = itemsize * (3 * n_rbf + 30 * n_features + 24)
    return max(256, CHUNK_BYTES // per_edge)


# Gathers use index_select: on CPU it is ~7x faster than advanced indexing t[idx].


def _geometry(r: torch.Tensor):
    d = torch.linalg.vector_norm(r, dim=1)
    return d, r / d[:, None]


def radial_filter_forward(d, weight, bias, basis_params, basis: str, cutoff: str, cutoff_params):
    phi, _ = basis_values(d, basis, basis_params, derivative=False)
    fc, _ = cutoff_values(d, cutoff, cutoff_params, derivative=False)
    return torch.addmm(bias, phi, weight.t()) * fc[:, None]


def radial_filter_backward(grad, d, weight, bias, basis_params, basis: str, cutoff: str, cutoff_params):
    """(dL/dd, dL/dweight, dL/dbias) for W = (phi(d) Wf^T + bf) fc(d)."""
    phi, dphi = basis_values(d, basis, basis_params)
    fc, dfc = cutoff_values(d, cutoff, cutoff_params)
    a = torch.addmm(bias, phi, weight.t())
    g_fc = grad * fc[:, None]
    gd = ((g_fc @ weight) * dphi).sum(1) + (grad * a).sum(1) * dfc
    return gd, g_fc.t() @ phi, g_fc.sum(0)


def message_forward(r, idx_i, idx_j, edges, x, mu: Optional[torch.Tensor], weight, bias, basis_params,
                    basis: str, cutoff: str, cutoff_params, chunk_size: int = 0):
    """(dq, dmu); ``edges`` (the prepared CSR/CSC) is not needed: index_add scatters any order."""
    n_atoms, f = x.shape[0], x.shape[1] // 3
    dq = x.new_zeros(n_atoms, f)
    dmu = x.new_zeros(n_atoms, 3, f)
    c = chunk_edges(f, weight.shape[1], x.dtype, chunk_size)
    for s in range(0, r.shape[0], c):
        ii, jj = idx_i[s:s + c], idx_j[s:s + c]
        d, u = _geometry(r[s:s + c])
        w = radial_filter_forward(d, weight, bias, basis_params, basis, cutoff, cutoff_params)
        m = w * x.index_select(0, jj)
        ms, mvr, mvv = m.split(f, dim=1)
        dq.index_add_(0, ii, ms)
        # dmu_e[c, f] = u[c] mvr[f] (+ mvv[f] mu_j[c, f]); broadcasting beats bmm with
        # inner size 1 on CPU
        dmu_e = u[:, :, None] * mvr[:, None, :]
        if mu is not None:
            dmu_e = torch.addcmul(dmu_e, mvv[:, None, :], mu.index_select(0, jj))
        dmu.index_add_(0, ii, dmu_e)
    return dq, dmu


def message_backward(gq, gmu, r, idx_i, idx_j, edges, x, mu: Optional[torch.Tensor], weight, bias, basis_params,
                     basis: str, cutoff: str, cutoff_params, chunk_size: int = 0, weight_grad: bool = True):
    """(dL/dr, dL/dx, dL/dmu or None, dL/dweight or None, dL/dbias or None); math in docs/ops.md.

    Per edge, with G = [gq_i, t, s] (t = u . gmu_i, s = sum_c gmu_i[c] mu_j[c]):
    dL/dW = G * x_j, dL/dx_j = G * W, dL/du = gmu_i (W_vr x_vr,j), dL/dmu_j = gmu_i W_vv x_vv,j.
    """
    f = x.shape[1] // 3
    gx = torch.zeros_like(x)
    gmu_in = torch.zeros_like(mu) if mu is not None else None
    gw = torch.zeros_like(weight) if weight_grad else None
    gb = torch.zeros_like(bias) if weight_grad else None
    gr_parts = []
    c = chunk_edges(f, weight.shape[1], x.dtype, chunk_size)
    for s in range(0, r.shape[0], c):
        ii, jj = idx_i[s:s + c], idx_j[s:s + c]
        d, u = _geometry(r[s:s + c])
        phi, dphi = basis_values(d, basis, basis_params)
        fc, dfc = cutoff_values(d, cutoff, cutoff_params)
        a = torch.addmm(bias, phi, weight.t())
        w = a * fc[:, None]
        xj = x.index_select(0, jj)
        gmui = gmu.index_select(0, ii)
        t = (u[:, :, None] * gmui).sum(1)
        if mu is not None:
            muj = mu.index_select(0, jj)
            sv = (gmui * muj).sum(1)
        else:
            sv = torch.zeros_like(t)
        g = torch.cat([gq.index_select(0, ii), t, sv], dim=1)
        g_w = g * xj
        gx.index_add_(0, jj, g * w)
        wx = w * xj
        if mu is not None:
            gmu_in.index_add_(0, jj, gmui * wx[:, None, 2 * f:])
        gu = (gmui * wx[:, None, f:2 * f]).sum(2)
        gd = fc * ((g_w @ weight) * dphi).sum(1) + (g_w * a).sum(1) * dfc
        gr_parts.append(gd[:, None] * u + (gu - (gu * u).sum(1, keepdim=True) * u) / d[:, None])
        if weight_grad:
            gw = gw + g_w.t() @ (phi * fc[:, None])
            gb = gb + g_w.t() @ fc
    gr = torch.cat(gr_parts) if gr_parts else torch.zeros_like(r)
    return gr, gx, gmu_in, gw, gb

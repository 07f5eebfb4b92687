"""The ReLU family's batched loss gradient for the grid trainer, written out instead of taken by autograd.

For G models stacked along the first axis (``aen_mini.train.grid``), each model's loss is

    L = scale * mean_b ||x_b - x_hat_b||^2 + mean_b sum_j c1_j h_bj + c2 mean_b sum_j h_bj^2,
    h = ReLU((x - b_dec) W_enc^T + b_enc),   x_hat = h W_dec^T + b_dec,

with c1_j the l1 coefficient of latent j (warm-up and adaptive weights folded in) and c2 the l2 coefficient.
Its gradient is four batched matmuls and a few elementwise passes. Autograd computes the same numbers
(tests/test_grid.py checks the grid against the one-SAE trainer) but launches about three times as many kernels, and
at the paper's size (batch 256, n = 256, m = 1024) a step is bound by kernel launches, not by arithmetic.
"""
from __future__ import annotations

import torch

__all__ = ["relu_family_grads"]


def relu_family_grads(params: dict[str, torch.Tensor], x: torch.Tensor, err_coef: torch.Tensor, l1_coef: torch.Tensor,
                      l2_coef: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write d(sum of the G losses)/d(parameter) into each parameter's ``.grad``; return the codes h (G, B, m) and
    the reconstruction error x - x_hat (G, B, n).

    ``params``: W_enc (G, m, n), b_enc (G, m), W_dec (G, n, m), b_dec (G, n), each with a ``.grad`` of its shape;
    ``x`` (G, B, n); ``err_coef`` (G, 1, 1) = -2 scale / B (d L / d x_hat per unit of error); ``l1_coef`` (G, 1 or m)
    = c1 / B; ``l2_coef`` (G,) = 2 c2 / B.
    """
    W_enc, b_enc, W_dec, b_dec = (params[k].detach() for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
    g = {k: params[k].grad for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    xc = x - b_dec[:, None, :]
    h = torch.baddbmm(b_enc[:, None, :], xc, W_enc.transpose(1, 2)).relu_()
    err = x - torch.baddbmm(b_dec[:, None, :], h, W_dec.transpose(1, 2))
    d_xhat = err * err_coef
    torch.bmm(d_xhat.transpose(1, 2), h, out=g["W_dec"])
    torch.sum(d_xhat, 1, out=g["b_dec"])
    d_h = torch.bmm(d_xhat, W_dec).add_(l1_coef[:, None, :]).addcmul_(h, l2_coef[:, None, None])
    d_pre = torch.ops.aten.threshold_backward(d_h, h, 0)  # ReLU's derivative: d_h where h > 0, else 0
    torch.bmm(d_pre.transpose(1, 2), xc, out=g["W_enc"])
    torch.sum(d_pre, 1, out=g["b_enc"])
    g["b_dec"][:, None, :].baddbmm_(g["b_enc"][:, None, :], W_enc, alpha=-1)  # through the encoder's x - b_dec
    return h, err

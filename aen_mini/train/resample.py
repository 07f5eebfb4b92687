"""Dead-latent resampling (Bricken et al. 2023): the classic patch for starvation that the book compares with.

Each dead latent is pointed at an input that the SAE reconstructs badly (sampled with probability
proportional to its squared error); its encoder row gets a small norm so it starts near the threshold, and
its optimiser moments are reset so Adam's history does not undo the move.
"""
from __future__ import annotations

import torch

from aen_mini.sae.base import SAE

ENCODER_SCALE = 0.2  # new encoder rows at 0.2 x the mean norm of living rows, as Bricken et al.


@torch.no_grad()
def resample_dead_latents(sae: SAE, x: torch.Tensor, optimizer: torch.optim.Optimizer, seed: int) -> int:
    """Re-initialise the latents of ``sae.dead_mask()`` toward badly reconstructed rows of ``x``; return how many."""
    dead = sae.dead_mask().nonzero().squeeze(1)
    if dead.numel() == 0:
        return 0
    x_hat, _ = sae(x)
    error = (x - x_hat).pow(2).sum(-1).float().cpu() + 1e-12
    rows = torch.multinomial(error, dead.numel(), replacement=True, generator=torch.Generator().manual_seed(seed))
    directions = x[rows.to(x.device)] - sae.b_dec
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    alive = ~sae.dead_mask()
    enc_norm = sae.W_enc[alive].norm(dim=-1).mean() if alive.any() else torch.tensor(1.0, device=x.device)
    sae.W_dec[:, dead] = directions.T.to(sae.W_dec.dtype)
    sae.W_enc[dead] = (directions * ENCODER_SCALE * enc_norm).to(sae.W_enc.dtype)
    sae.b_enc[dead] = 0.0
    for param, index in ((sae.W_dec, (slice(None), dead)), (sae.W_enc, dead), (sae.b_enc, dead)):
        for moment in ("exp_avg", "exp_avg_sq"):
            state = optimizer.state.get(param, {})
            if moment in state:
                state[moment][index] = 0.0
    sae.tokens_since_fired[dead] = 0
    return int(dead.numel())

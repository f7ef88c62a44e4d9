"""SparseGPT: prune, then let the weights not yet visited absorb the error (one-shot OBS updates).

Frantar, Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot" (2023,
arXiv:2301.00774). For a Linear with weight W (rows x cols) and calibration inputs X, with
H = 2 X^T X / N and U the upper Cholesky factor of (H + damp I)^-1 (the same two steps as GPTQ,
shared with `workbench.quant.gptq`):

    for each block of 128 columns:
        choose the block's mask: in each row, the lowest  w^2 / U[j, j]^2  go (the OBS saliency:
        the error a weight's removal costs once the others compensate); with N:M, chosen per group
        of M columns when the loop reaches it, from the already-updated weights
        for each column j of the block:
            err = (w_j - mask_j * w_j) / U[j, j]
            w_k -= err * U[j, k] for every later column k       (the kept weights compensate)

This is GPTQ's loop with "round to the grid" replaced by "zero if masked". Whole model: layer by
layer, with the calibration inputs of a layer computed by the layers before it already pruned
(`sequential_hessian_pass`). The Linears of a group that share one input (q/k/v, gate/up) are
pruned together as one tall matrix: rows are independent given H, and one column loop is cheaper.
"""

from __future__ import annotations

import torch

from ..quant.gptq import calibration_ids, inverse_hessian_factor, sequential_hessian_pass
from .masks import check_sparsity, decoder_linears, mask_for, nm_mask

CALIBRATION_TOKENS = 2048


@torch.no_grad()
def sparsegpt_prune_weight(weight: torch.Tensor, H: torch.Tensor, sparsity: float = 0.5,
                           nm: tuple[int, int] | None = None, block_size: int = 128, damp: float = 0.01):
    """(pruned weight, mask) for one weight (rows, cols) given the Hessian H (cols, cols) of its inputs."""
    if nm is None:
        sparsity = check_sparsity(sparsity)
    elif weight.shape[1] % nm[1]:
        nm_mask(weight, *nm)  # raises the clear error
    W = weight.detach().float().clone()
    rows, cols = W.shape
    H = H.detach().clone()
    dead = torch.diag(H) == 0          # an input that is always 0: its weights can't matter
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = inverse_hessian_factor(H, damp, "SparseGPT")
    mask = torch.ones(rows, cols, dtype=torch.bool, device=W.device)
    if nm is not None:
        block_size = block_size // nm[1] * nm[1] or nm[1]  # N:M groups never straddle blocks
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        d = torch.diag(Hinv1)
        M1 = mask[:, i1:i2]
        if nm is None:
            M1[:] = mask_for(W1 ** 2 / d ** 2, sparsity, per_row=True)
        P1 = ~M1 / d                            # 1/U[j, j] where pruned, 0 where kept
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                span = slice(i, i + nm[1])
                M1[:, span] = nm_mask(W1[:, span] ** 2 / d[span] ** 2, *nm)
                P1[:, span] = ~M1[:, span] / d[span]
            err = torch.mul(W1[:, i], P1[:, i], out=Err1[:, i])  # (w - kept w) / U[j, j]
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)
        W[:, i1:i2] = W1 * M1
        # Lazy batch update: the later blocks receive this block's errors in one matmul.
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.to(weight.dtype), mask


def sparsegpt_prune_(model, tokenizer, sparsity: float = 0.5, *, nm: tuple[int, int] | None = None, layers=None,
                     calibration_text=None, calibration_tokens: int = CALIBRATION_TOKENS, window: int = 512,
                     block_size: int = 128, damp: float = 0.01, verbose: bool = False):
    """Prune the decoder matrices in place with SparseGPT; returns the model.

    `calibration_text` (a string or token ids) defaults to the built-in calibration part."""
    if nm is None:
        sparsity = check_sparsity(sparsity)
    chosen = decoder_linears(model, layers)
    ids = calibration_ids(model, tokenizer, calibration_text, calibration_tokens, window)

    def prune(layer, names, H):
        linears = [layer.get_submodule(n) for n in names]
        tall = torch.cat([m.weight for m in linears])
        pruned, _ = sparsegpt_prune_weight(tall, H.to(tall.device), sparsity, nm, block_size, damp)
        for linear, part in zip(linears, pruned.split([m.out_features for m in linears])):
            linear.weight.copy_(part)

    chosen_ids = {id(m) for m in chosen.values()}
    return sequential_hessian_pass(model, ids, prune, lambda _name, m: id(m) in chosen_ids, verbose,
                                   label="sparsegpt", dtype=torch.float32)

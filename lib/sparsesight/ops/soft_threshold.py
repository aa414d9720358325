"""Soft-thresholding: the proximal operator of the l1 norm (Table I of seed 000)."""
import torch


def soft_threshold(z: torch.Tensor, lam) -> torch.Tensor:
    """S_lam(z) = sign(z) * max(|z| - lam, 0), the prox of lam*||.||_1 (two-sided)."""
    return torch.sign(z) * torch.relu(torch.abs(z) - lam)


def soft_threshold_nonneg(z: torch.Tensor, lam) -> torch.Tensor:
    """S+_lam(z) = max(z - lam, 0) = ReLU(z - lam): the prox of lam*||.||_1 + indicator(z >= 0).

    Table I of seed 000 identifies the soft-thresholding operator with ReLU(z - lam); this is the
    non-negative sparse coding variant used by ML-ISTA networks.
    """
    return (z - lam).relu_()  # in place on the fresh difference: one temporary less, autograd-safe

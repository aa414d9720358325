"""Soft-thresholding: the proximal operator of the l1 norm (Table I of seed 000)."""
import torch


def soft_threshold(z: torch.Tensor, lam, inplace: bool = False) -> torch.Tensor:
    """S_lam(z) = sign(z) * max(|z| - lam, 0), the prox of lam*||.||_1 (two-sided).

    For lam >= 0 computed as z - clamp(z, -lam, lam): the same values bit for bit (z -/+ lam outside
    [-lam, lam], 0 inside) and the same gradients, in two passes over z instead of five (sign, abs, sub, relu,
    mul). A negative lam (an unconstrained learned threshold, e.g. an old SUM checkpoint) amplifies,
    sign(z) (|z| + |lam|), as the formula says: that case keeps the formula. `inplace`: overwrite z with the result
    (a fresh temporary nobody else holds; not under autograd) where the clamp form applies."""
    if not torch.is_tensor(lam):
        lam = torch.as_tensor(lam, dtype=z.dtype, device=z.device)
    if bool((lam >= 0).all()):
        return z.sub_(z.clamp(-lam, lam)) if inplace else z - z.clamp(-lam, lam)
    return torch.sign(z) * torch.relu(torch.abs(z) - lam)


def soft_threshold_nonneg(z: torch.Tensor, lam) -> torch.Tensor:
    """S+_lam(z) = max(z - lam, 0) = ReLU(z - lam): the prox of lam*||.||_1 + indicator(z >= 0).

    Table I of seed 000 identifies the soft-thresholding operator with ReLU(z - lam); this is the
    non-negative sparse coding variant used by ML-ISTA networks.
    """
    return (z - lam).relu_()  # in place on the fresh difference: one temporary less, autograd-safe

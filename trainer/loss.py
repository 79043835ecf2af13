"""Weighted MSE (Eq. 2 of Xing et al. 2019) and its two-source form for auxiliary data."""

from __future__ import annotations

import torch

from micronet.runtime.errors import InputError

__all__ = ["weighted_mse", "two_source_loss"]


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, lam: float = 5.0) -> torch.Tensor:
    """Eq. 2: per image, mean over pixels of ``(y + λ·ȳ) · (ŷ − y)²`` with ȳ that image's
    mean target, then the mean over images. Background pixels keep a weight λ·ȳ, so the
    sparse nuclei do not drown in empty tissue.

    Args:
        pred, target: ``(B, 1, H, W)`` float tensors.
    """
    if pred.shape != target.shape:
        raise InputError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    pred = pred.float()
    target = target.float()
    mean_target = target.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    per_image = ((target + lam * mean_target) * (pred - target).pow(2)).mean(dim=(1, 2, 3))  # (B,)
    return per_image.mean()


def two_source_loss(
    pred: torch.Tensor, target: torch.Tensor, is_target_domain: torch.Tensor, gamma: float, lam: float = 5.0
) -> torch.Tensor:
    """``γ · L_target + L_auxiliary`` (paper, training with auxiliary data).

    Args:
        is_target_domain: ``(B,)`` bool, True for images from the target data set.
        gamma: weight γ of the target-domain term.
    """
    loss = pred.new_zeros(())
    mask = is_target_domain.bool()
    if mask.any():
        loss = loss + gamma * weighted_mse(pred[mask], target[mask], lam)
    if (~mask).any():
        loss = loss + weighted_mse(pred[~mask], target[~mask], lam)
    return loss

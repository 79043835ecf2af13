"""Weighted MSE (Eq. 2 of Xing et al. 2019) and its two-source form for auxiliary data."""

from __future__ import annotations

from typing import Callable

import torch

from micronet.runtime.errors import InputError

__all__ = ["loss_for", "weighted_mse", "weighted_mse_per_image", "two_source_loss"]


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, lam: float = 5.0) -> torch.Tensor:
    """Eq. 2: per image, mean over pixels of ``(y + λ·ȳ) · (ŷ − y)²`` with ȳ that image's
    mean target, then the mean over images. Background pixels keep a weight λ·ȳ, so the
    sparse nuclei do not drown in empty tissue.

    Args:
        pred, target: ``(B, 1, H, W)`` float tensors.
    """
    return weighted_mse_per_image(pred, target, lam).mean()


def weighted_mse_per_image(pred: torch.Tensor, target: torch.Tensor, lam: float = 5.0) -> torch.Tensor:
    """Eq. 2 of each image, ``(B,)``: what :func:`weighted_mse` averages (distillation
    weighs each image's terms by its source)."""
    if pred.shape != target.shape:
        raise InputError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    pred = pred.float()
    target = target.float()
    mean_target = target.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return ((target + lam * mean_target) * (pred - target).pow(2)).mean(dim=(1, 2, 3))  # (B,)


def two_source_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    is_target_domain: torch.Tensor,
    gamma: float,
    lam: float = 5.0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``γ · L_target + L_auxiliary`` (paper, training with auxiliary data).

    Args:
        is_target_domain: ``(B,)`` bool, True for images from the target data set.
        gamma: weight γ of the target-domain term.
        loss_fn: the per-source loss; default Eq. 2 with ``lam``.
    """
    if loss_fn is None:
        loss_fn = lambda p, t: weighted_mse(p, t, lam)  # noqa: E731
    loss = pred.new_zeros(())
    mask = is_target_domain.bool()
    if mask.any():
        loss = loss + gamma * loss_fn(pred[mask], target[mask])
    if (~mask).any():
        loss = loss + loss_fn(pred[~mask], target[~mask])
    return loss


def loss_for(kind: str, lam: float = 5.0):
    """The per-batch loss ``f(pred, target)`` of a target kind, each as its paper trains it.

    - ``"proximity"``: Eq. 2 (MicroNet; FRCN's structured regression weights pixels the
      same way, by target plus a share of the mean).
    - ``"disk"``: pixel-wise binary cross-entropy on logits (FCN, U-Net as classifiers).
    - ``"density"``: plain mean squared error (FCRN-A/B).
    """
    if kind == "proximity":
        return lambda pred, target: weighted_mse(pred, target, lam)
    if kind == "disk":
        return lambda pred, target: torch.nn.functional.binary_cross_entropy_with_logits(pred.float(), target.float())
    if kind == "density":
        return lambda pred, target: torch.nn.functional.mse_loss(pred.float(), target.float())
    raise InputError(f"unknown target kind {kind!r}; valid: proximity, disk, density")

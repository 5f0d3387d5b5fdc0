"""Contrastive training: losses now; the head trainer builds on them."""

from lookalike.train.losses import InfoNCELoss, SupConLoss

__all__ = ["InfoNCELoss", "SupConLoss"]

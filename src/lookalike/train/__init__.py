"""Contrastive training: composable losses, and head mode on frozen backbone features."""

from lookalike.train.head import HeadConfig, ProjectionHead, save_model, train_head
from lookalike.train.losses import InfoNCELoss, SupConLoss

__all__ = ["HeadConfig", "InfoNCELoss", "ProjectionHead", "SupConLoss", "save_model",
           "train_head"]

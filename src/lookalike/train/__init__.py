"""Contrastive training: composable losses, head mode on frozen backbone features, and
fine-tuning mode, both through one training loop, saved as model folders."""

from lookalike.encoders.model_folder import load_model, save_model
from lookalike.train.finetune import FinetuneConfig, finetune
from lookalike.train.head import HeadConfig, ProjectionHead, train_head
from lookalike.train.losses import InfoNCELoss, SupConLoss

__all__ = ["FinetuneConfig", "HeadConfig", "InfoNCELoss", "ProjectionHead", "SupConLoss",
           "finetune", "load_model", "save_model", "train_head"]

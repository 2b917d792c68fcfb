"""Networks: backbones (ResNets, a small CNN) and heads (MLPs, multi-head cluster heads)."""

from smcluster.models.backbones import BACKBONES, Backbone, build_backbone
from smcluster.models.heads import MLP, ClusterHeads

__all__ = ["BACKBONES", "Backbone", "build_backbone", "MLP", "ClusterHeads"]

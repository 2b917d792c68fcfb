"""Networks: backbones (ResNets, small CNN, pretrained models) and heads (MLPs, cluster heads)."""

from smcluster.models.backbones import BACKBONES, Backbone, build_backbone
from smcluster.models.heads import MLP, ClusterHeads
from smcluster.models.pretrained import (
    PRETRAINED_SOURCES,
    Preprocess,
    PretrainedBackbone,
    build_pretrained,
    is_pretrained,
    load_pretrained,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "build_backbone",
    "MLP",
    "ClusterHeads",
    "PRETRAINED_SOURCES",
    "PretrainedBackbone",
    "Preprocess",
    "build_pretrained",
    "is_pretrained",
    "load_pretrained",
]

"""Models: ImageNet backbones, GAP and bilinear heads, the TSN, fine-tuning controls.

Knows nothing of files except pretrained weight loading.
"""

from tsn.models.backbones import (
    BACKBONE_NAMES,
    DEFAULT_BACKBONE,
    TimmBackbone,
    UnknownBackbone,
    build_backbone,
    efficientnet_lite0_imagenet,
    efficientnet_lite_imagenet,
)
from tsn.models.bninception import BNInception
from tsn.models.build import HEAD_TYPES, build_model
from tsn.models.efficientnet_lite import EfficientNetLite, EfficientNetLite0
from tsn.models.features import FeatureExtractor
from tsn.models.finetune import convert_sync_batchnorm, freeze_backbone, freeze_stages, param_groups, unwrap
from tsn.models.heads import BilinearHead, GAPHead, bilinear_pool, init_new_layers
from tsn.models.spec import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec
from tsn.models.summary import LayerRow, ModelSummary, summarize
from tsn.models.tsn import CONSENSUS_TYPES, TSN, batchnorm_layers
from tsn.models.weights import (
    LoadReport,
    PretrainedWeightsNotFound,
    hub_checkpoint_path,
    load_state_dict_flexible,
    match_module_prefix,
    read_state_dict,
)

__all__ = [
    "BACKBONE_NAMES",
    "CONSENSUS_TYPES",
    "DEFAULT_BACKBONE",
    "HEAD_TYPES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BNInception",
    "BackboneSpec",
    "BilinearHead",
    "EfficientNetLite",
    "EfficientNetLite0",
    "FeatureExtractor",
    "GAPHead",
    "LayerRow",
    "LoadReport",
    "ModelSummary",
    "PretrainedWeightsNotFound",
    "TSN",
    "TimmBackbone",
    "UnknownBackbone",
    "batchnorm_layers",
    "bilinear_pool",
    "build_backbone",
    "build_model",
    "convert_sync_batchnorm",
    "efficientnet_lite0_imagenet",
    "efficientnet_lite_imagenet",
    "freeze_backbone",
    "freeze_stages",
    "hub_checkpoint_path",
    "init_new_layers",
    "load_state_dict_flexible",
    "match_module_prefix",
    "param_groups",
    "read_state_dict",
    "summarize",
    "unwrap",
]

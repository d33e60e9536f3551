"""Fine-tuning controls: frozen backbone, optimizer parameter groups, SyncBatchNorm for DDP.

Partial BatchNorm lives in ``TSN`` itself (``partial_bn=True``), since it must act in ``train()``.
"""

from __future__ import annotations

from torch import nn

from tsn.models.tsn import TSN

# Layers whose weights are scales and shifts: no weight decay with no_decay_bias_norm
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel/DistributedDataParallel, or ``model`` itself."""
    return model.module if isinstance(model, _WRAPPERS) else model


def freeze_backbone(model: TSN) -> None:
    """Train the head only: backbone parameters get requires_grad False and the backbone stays
    in eval mode (BatchNorm statistics fixed) even when ``model.train()`` is called."""
    model = unwrap(model)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    model.backbone_frozen = True
    model.train(model.training)  # apply now, not only at the next train()


def freeze_stages(model: TSN, stages: int) -> list[str]:
    """Freeze the first ``stages`` of ``model.spec.feature_layers`` and every backbone parameter
    registered before the last of them (the stem); returns the frozen parameter names.

    Frozen parameters get requires_grad False, and every module all of whose parameters are frozen
    stays in eval mode in ``train()`` (BatchNorm statistics fixed). Low layers hold generic edges
    and textures that a few hundred clips cannot improve, and the high-resolution layers are
    where most of a backward pass goes; mmaction2 calls this ``frozen_stages``.
    """
    model = unwrap(model)
    layers = model.spec.feature_layers
    if not 0 <= stages <= len(layers):
        raise ValueError(f"frozen stages must be in [0, {len(layers)}] for backbone {model.spec.name!r} "
                         f"(stages: {', '.join(layers)}), got {stages}")
    if stages == 0:
        return []
    last = layers[stages - 1]
    names = [name for name, _ in model.backbone.named_parameters()]
    inside = [i for i, name in enumerate(names) if name.startswith(last + ".")]
    if not inside:
        raise ValueError(f"backbone {model.spec.name!r}: stage {last!r} has no parameters to freeze")
    frozen = set(names[: inside[-1] + 1])
    for name, param in model.backbone.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    model.frozen_modules = frozen_modules(model.backbone)
    model.train(model.training)  # apply now, not only at the next train()
    return [name for name in names if name in frozen]


def frozen_modules(backbone: nn.Module) -> list[nn.Module]:
    """The modules of ``backbone`` that have parameters, all with requires_grad False."""
    return [module for module in backbone.modules()
            if any(True for _ in module.parameters(recurse=False))
            and all(not p.requires_grad for p in module.parameters(recurse=False))]


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    backbone_lr_mult: float = 1.0,
    no_decay_bias_norm: bool = True,
) -> list[dict]:
    """Optimizer parameter groups, each ``{"params", "lr", "weight_decay", "name"}``.

    Parameters under ``model.backbone`` get ``lr * backbone_lr_mult``, the rest (head) ``lr``.
    With ``no_decay_bias_norm`` every 1-D parameter (biases, normalisation weights, layer scales
    such as ConvNeXt's ``gamma``) and every parameter of a normalisation layer get weight decay 0,
    as timm does: decay pulls such scales and offsets towards 0, which changes what the layer
    computes instead of regularising it.
    Frozen parameters (requires_grad False) are left out; every other parameter appears exactly
    once. Empty groups are dropped. Works on a DataParallel/DDP-wrapped model.
    """
    net = unwrap(model)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in net.named_modules():
        part = "backbone" if module_name == "backbone" or module_name.startswith("backbone.") else "head"
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            exempt = param.ndim <= 1 or isinstance(module, _NORM_TYPES)  # biases are 1-D
            decay = not (no_decay_bias_norm and exempt)
            groups.setdefault((part, decay), []).append(param)
    result = []
    for part in ("backbone", "head"):
        for decay in (True, False):
            params = groups.get((part, decay))
            if params:
                result.append(
                    {
                        "params": params,
                        "lr": lr * backbone_lr_mult if part == "backbone" else lr,
                        "weight_decay": weight_decay if decay else 0.0,
                        "name": f"{part}/{'decay' if decay else 'no_decay'}",
                    }
                )
    return result


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm -> SyncBatchNorm, for DDP on CUDA (call before wrapping in DDP).

    Parameters and statistics are carried over (same tensors, same requires_grad), and the
    TSN's partial-BN / frozen-backbone eval modes are applied again to the new layers.
    """
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(converted, TSN) and converted.frozen_modules:
        converted.frozen_modules = frozen_modules(converted.backbone)  # the new layers, not the replaced ones
    return converted.train(converted.training)

"""Models of both papers: logistic regression, MLP (784-100-10, paper B's 784-30-10), a small CNN for
MNIST, and ResNet-20 for CIFAR-10 (ALGORITHMS.md §6: option A shortcut, 269,722 parameters)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("logreg", "mlp", "cnn", "resnet20")
#: each model's options (`model.<option>` keys besides the name); any other key is refused, not ignored
OPTIONS = {"logreg": ("binary",), "mlp": ("hidden",), "cnn": ("width",), "resnet20": ("shortcut", "norm")}


class LogReg(nn.Module):
    """Multinomial logistic regression (binary when num_classes = 2: two logits, softmax = sigmoid).

    binary=True: paper B's binary logistic regression, one weight vector and one bias (d = in + 1). The
    logits are [0, z], so softmax / cross-entropy / argmax see sigmoid(z) as the probability of class 1.
    """

    def __init__(self, in_features: int, num_classes: int, binary: bool = False):
        super().__init__()
        self.binary = binary
        self.fc = nn.Linear(in_features, 1 if binary else num_classes)

    def forward(self, x):
        z = self.fc(x.flatten(1))
        return torch.cat([torch.zeros_like(z), z], dim=1) if self.binary else z


class MLP(nn.Module):
    """Fully connected ReLU network, e.g. 784-100-10 (default) or paper B's 784-30-10."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (100,)):
        super().__init__()
        sizes = [in_features, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], num_classes)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.out(x)


class CNN(nn.Module):
    """Small CNN for 28x28 MNIST: conv(1->16,5)-pool-conv(16->32,5)-pool-fc(512->64)-fc(64->C); 46,730 params."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, width: int = 16):
        super().__init__()
        c, h, w = in_shape
        self.conv1 = nn.Conv2d(c, width, 5)
        self.conv2 = nn.Conv2d(width, 2 * width, 5)
        hh, ww = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if hh < 1 or ww < 1:
            raise ValueError(f"model.name 'cnn' needs inputs of at least 16x16, got {h}x{w}")
        self.fc1 = nn.Linear(2 * width * hh * ww, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


# ----------------------------------------------------------------------------------------------- ResNet-20

def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":  # paper A App. E.2 (non-i.i.d.): GroupNorm with groups of 2 channels
        return nn.GroupNorm(channels // 2, channels)
    raise ValueError(f"model.norm '{kind}' is unknown; choose bn or gn")


class ShortcutA(nn.Module):
    """Option A: subsample by 2 and zero-pad planes/4 channels on each side (parameter-free)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, inp: int, planes: int, stride: int, shortcut: str, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inp != planes:
            if shortcut == "A":
                self.shortcut = ShortcutA(planes)
            elif shortcut == "B":
                self.shortcut = nn.Sequential(nn.Conv2d(inp, planes, 1, stride, bias=False), _norm(norm, planes))
            else:
                raise ValueError(f"model.shortcut '{shortcut}' is unknown; choose A or B")

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for CIFAR (He et al. 2016 §4.2): 3 stages x 3 BasicBlocks, widths 16/32/64."""

    def __init__(self, in_shape: Sequence[int], num_classes: int = 10, shortcut: str = "A", norm: str = "bn"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_shape[0], 16, 3, 1, 1, bias=False)
        self.bn1 = _norm(norm, 16)
        layers, inp = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(BasicBlock(inp, planes, stride if i == 0 else 1, shortcut, norm))
                inp = planes
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(64, num_classes)
        for mod in self.modules():  # akamaster-style init (ALGORITHMS.md §6.1)
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(mod.weight)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def is_binary(binary) -> bool:
    """Whether `model.binary` asks for a binary task: even_odd or a class index, class 0 included
    (`0 in (None, False)` is true in Python, so membership tests would drop class 0)."""
    return binary is not None and binary is not False


def build_model(name: str, input_shape: Sequence[int], num_classes: int, **kw) -> nn.Module:
    """Build model `name` for inputs of shape (C, H, W) and `num_classes` outputs."""
    if name in OPTIONS:
        unknown = sorted(set(kw) - set(OPTIONS[name]))
        if unknown:
            raise ValueError(f"model '{name}' has no option(s) {unknown}; it takes {list(OPTIONS[name])}")
    in_features = math.prod(input_shape)
    if name == "logreg":
        return LogReg(in_features, num_classes, binary=is_binary(kw.get("binary")))
    if name == "mlp":
        return MLP(in_features, num_classes, tuple(kw.get("hidden") or (100,)))
    if name == "cnn":
        return CNN(input_shape, num_classes, int(kw.get("width", 16)))
    if name == "resnet20":
        return ResNet20(input_shape, num_classes, str(kw.get("shortcut", "A")), str(kw.get("norm", "bn")))
    raise ValueError(f"model.name '{name}' is unknown; choose one of {list(MODELS)}")


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["MODELS", "build_model", "num_parameters", "torch"]

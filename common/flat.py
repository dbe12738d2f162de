"""Flat parameter buffers: a model's parameters (and gradients, and BatchNorm buffers) as views into one
contiguous tensor, so that a round broadcasts, sends and updates one buffer and nothing is copied.

Layout of the broadcast buffer (DESIGN.md, round protocol step 1)::

    [ header (HEADER floats) | parameters (d) | BatchNorm running statistics (k) ]

Header fields are small integers and one learning rate stored in float32 (exact up to 2^24 rounds).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

# header slots
H_ROUND, H_EPOCH, H_LR, H_STOP, H_CKPT, H_SEED, H_TAU, H_EXTRA = range(8)
HEADER = 8


def write_header(header: Tensor, *slots: float) -> None:
    """Set the header slots in order (H_ROUND, H_EPOCH, ...; the rest 0) with one copy: single-element
    writes would each be a blocking host-to-device copy when the buffer lives on a GPU."""
    header.copy_(torch.tensor([*slots, *[0.0] * (HEADER - len(slots))], dtype=header.dtype))


def _float_buffers(model: nn.Module) -> list[Tensor]:
    """BatchNorm running mean/var (floating buffers); integer counters stay local."""
    return [b for b in model.buffers() if b.is_floating_point()]


@dataclass
class FlatModel:
    """A model whose parameters, gradients and float buffers live in flat tensors.

    buf:    (HEADER + d + k,) broadcast buffer; `header`, `params`, `bn` are views into it
    grad:   (d,) gradient buffer; every `p.grad` is a view into it
    """

    model: nn.Module
    buf: Tensor
    header: Tensor
    params: Tensor
    bn: Tensor
    grad: Tensor

    @property
    def d(self) -> int:
        return self.params.numel()

    @property
    def k(self) -> int:
        return self.bn.numel()


def flatten_model(model: nn.Module, device: torch.device | str = "cpu") -> FlatModel:
    """Move `model` to `device` and rebind its parameters, gradients and float buffers as flat views."""
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    bufs = _float_buffers(model)
    d = sum(p.numel() for p in params)
    k = sum(b.numel() for b in bufs)
    buf = torch.zeros(HEADER + d + k, device=device, dtype=torch.float32)
    grad = torch.zeros(d, device=device, dtype=torch.float32)
    off = HEADER
    goff = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            view = buf[off:off + n].view_as(p)
            view.copy_(p.data)
            p.data = view
            p.grad = grad[goff:goff + n].view_as(p)
            off += n
            goff += n
        for b in bufs:
            n = b.numel()
            view = buf[off:off + n].view_as(b)
            view.copy_(b)
            b.data = view
            off += n
    return FlatModel(model, buf, buf[:HEADER], buf[HEADER:HEADER + d], buf[HEADER + d:], grad)


def views_intact(fm: FlatModel) -> bool:
    """True when every parameter/gradient still aliases the flat buffers (no silent copy happened)."""
    ptr, gptr = fm.buf.data_ptr(), fm.grad.data_ptr()
    end, gend = ptr + fm.buf.numel() * 4, gptr + fm.grad.numel() * 4
    for p in fm.model.parameters():
        if not (ptr <= p.data_ptr() < end and p.grad is not None and gptr <= p.grad.data_ptr() < gend):
            return False
    return True

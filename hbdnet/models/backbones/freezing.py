"""mmdet's ``frozen_stages`` and ``norm_eval`` for any backbone."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def apply_freezing(backbone: nn.Module, frozen: Iterable[nn.Module], norm_eval: bool, training: bool) -> None:
    """Freeze ``frozen`` (eval mode, no gradients) and, when ``norm_eval``, keep every BN in eval mode.

    Call after ``nn.Module.train(mode)``, which would otherwise switch them back to training mode.
    """
    for m in frozen:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    if training and norm_eval:
        for m in backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()

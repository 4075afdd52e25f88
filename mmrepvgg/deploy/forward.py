"""The one forward wrapper: logits from an image batch, for any OpenMMLab model.

:class:`TensorForward` calls an mmpretrain classifier or mmseg segmentor in
``mode='tensor'`` (a plain module as it is), so exporters, timers and comparisons see one
tensor-in, tensors-out module; :func:`tensor_outputs` runs it without gradients and returns
the output tensors as a flat list.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn


class TensorForward(nn.Module):
    """Call an OpenMMLab model in ``mode='tensor'``: logits from an image batch.

    Classifiers return the head's logits; segmentors their decode head's logits (at the
    decode head's resolution, before resizing to the input).

    Args:
        model: An mmpretrain classifier or mmseg segmentor (or a plain module).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, data_samples: Any = None) -> Any:
        if accepts_mode(self.model):
            return self.model(x, data_samples, mode='tensor')
        return self.model(x)


def accepts_mode(model: nn.Module) -> bool:
    """Whether ``model`` is an OpenMMLab model that takes ``mode='tensor'``."""
    return hasattr(model, 'data_preprocessor') and hasattr(model, 'extract_feat')


def flatten_outputs(out: Any) -> list[Tensor]:
    """The tensors in a model output (tensor, tuple/list or dict of them), in order."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    return []


def tensor_outputs(model: nn.Module, inputs: Tensor, data_samples: Any = None) -> list[Tensor]:
    """``model``'s output tensors on a preprocessed batch, through :class:`TensorForward`,
    without gradients.

    Args:
        model: An OpenMMLab model or a plain module (a :class:`TensorForward` is used as is).
        inputs: The preprocessed batch.
        data_samples: Passed to an OpenMMLab model with the inputs.

    Returns:
        The output tensors, flattened (:func:`flatten_outputs`).

    Raises:
        RuntimeError: If the model returned no tensor.
    """
    module = model if isinstance(model, TensorForward) else TensorForward(model)
    with torch.no_grad():
        outputs = flatten_outputs(module(inputs, data_samples))
    if not outputs:
        raise RuntimeError(f'{type(model).__name__} returned no tensors in mode="tensor"')
    return outputs

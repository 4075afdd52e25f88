"""Proving a folded model right: outputs compared before and after folding.

:func:`fold_and_verify` folds a model in place and compares its outputs with the
training-time ones; :func:`compare_outputs` is the one output comparison (also of PyTorch
against ONNX Runtime and of ours against the peers). The weights themselves are checked by
the fold (:mod:`mmrepvgg.models.fusion`); :func:`check_finite_state` covers a state dict
about to be written (the head and neck too).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..models import reparameterize
from ..utils.errors import VerificationError
from .build import count_blocks, tensor_outputs

#: Default bound on the relative output difference (max |diff| / max |reference|) between
#: the training-time and the folded model, in fp32: far above the rounding of an exact fold,
#: far below what a real error (a BN in training mode, a wrong key) gives
#: (docs/exactness_cpu.md).
DEFAULT_TOLERANCE = 1e-4


@dataclasses.dataclass
class FoldReport:
    """What folding a model did and how close the outputs stayed.

    Args:
        folded: Blocks folded.
        max_abs: Max absolute output difference (None if not verified).
        max_rel: ``max_abs`` relative to the largest reference output.
        input_shape: The shape of the verification input.
    """

    folded: int
    max_abs: float | None = None
    max_rel: float | None = None
    input_shape: tuple[int, ...] | None = None

    def summary(self) -> str:
        text = f'folded {self.folded} RepVGG blocks'
        if self.max_abs is not None:
            text += (f'; outputs before vs after on input {self.input_shape}: max abs diff '
                     f'{self.max_abs:.3g}, max rel diff {self.max_rel:.3g}')
        return text


def _count_nonfinite(tensors: Sequence[Tensor]) -> tuple[int, int]:
    bad = sum(int((~torch.isfinite(t)).sum()) for t in tensors if t.is_floating_point())
    return bad, sum(t.numel() for t in tensors)


#: Why a model's own outputs can be NaN or Inf (:func:`compare_outputs`' default).
BROKEN_WEIGHTS = ("the model's weights or BN statistics are broken (a diverged run or a "
                  'damaged checkpoint)')


def compare_outputs(reference: Sequence[Tensor], outputs: Sequence[Tensor],
                    labels: tuple[str, str] = ('before folding', 'after folding'),
                    causes: tuple[str, str] = (BROKEN_WEIGHTS, BROKEN_WEIGHTS)
                    ) -> tuple[float, float]:
    """Max absolute difference and that relative to the largest reference magnitude.

    Args:
        reference: The reference outputs.
        outputs: The outputs compared with them.
        labels: What the two are, as the messages name them (default: the model before
            and after folding; e.g. ``('of PyTorch', 'of ONNX Runtime (fp16)')``).
        causes: Why each could hold NaN or Inf, for the message.

    Raises:
        VerificationError: If the outputs differ in number or shape, or if any output is
            NaN or Inf (a NaN would otherwise vanish from the maximum and report a perfect
            match).
    """
    if len(reference) != len(outputs):
        raise VerificationError(f'{len(reference)} outputs {labels[0]}, {len(outputs)} '
                                f'{labels[1]}')
    for label, cause, tensors in zip(labels, causes, (reference, outputs)):
        bad, total = _count_nonfinite(tensors)
        if bad:
            raise VerificationError(f'{bad} of {total} output values {label} are NaN or Inf: '
                                    f'{cause}')
    max_abs, scale = 0.0, 0.0
    for ref, out in zip(reference, outputs):
        if ref.shape != out.shape:
            raise VerificationError(f'Output shapes differ: {tuple(ref.shape)} {labels[0]}, '
                                    f'{tuple(out.shape)} {labels[1]}')
        max_abs = max(max_abs, (out.double() - ref.double()).abs().max().item())
        scale = max(scale, ref.double().abs().max().item())
    return max_abs, max_abs / max(scale, 1e-12)


def check_finite_state(state: Mapping[str, Tensor], what: str = 'The deployed state dict') -> None:
    """Refuse a state dict holding NaN or Inf (a checkpoint that must never be written).

    Raises:
        VerificationError: Naming how many tensors are affected and the first ones.
    """
    bad = [k for k, v in state.items()
           if isinstance(v, Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        shown = ', '.join(bad[:4]) + (', ...' if len(bad) > 4 else '')
        raise VerificationError(f'{what} has {len(bad)} tensors with NaN or Inf ({shown}); '
                                'nothing was written')


def fold_and_verify(model: nn.Module, inputs: Tensor | None = None, data_samples: Any = None,
                    tolerance: float | None = DEFAULT_TOLERANCE) -> FoldReport:
    """Fold ``model`` in place (eval mode) and, given inputs, compare outputs before/after.

    Args:
        model: The training-time model; it is put in eval mode and folded in place.
        inputs: A preprocessed batch (None: fold without verifying).
        data_samples: Passed to the model with the inputs.
        tolerance: Fail if the relative difference exceeds it (None: only report).

    Returns:
        A :class:`FoldReport`.

    Raises:
        VerificationError: If the outputs differ by more than ``tolerance`` or any is
            NaN/Inf.
        mmrepvgg.models.fusion.FoldError: If a block's weights or BN statistics are
            non-finite or a variance is not positive (nothing is folded then).
    """
    model.eval()
    reference = tensor_outputs(model, inputs, data_samples) if inputs is not None else None
    folded = count_blocks(model, deployed=False)
    reparameterize(model)
    report = FoldReport(folded)
    if reference is not None:
        report.max_abs, report.max_rel = compare_outputs(
            reference, tensor_outputs(model, inputs, data_samples))
        report.input_shape = tuple(inputs.shape)
        if tolerance is not None and not report.max_rel <= tolerance:
            raise VerificationError(
                f'The folded model does not reproduce the training-time one: max rel diff '
                f'{report.max_rel:.3g} > {tolerance:g} (max abs {report.max_abs:.3g}). Are '
                'all BN running statistics loaded?')
    return report

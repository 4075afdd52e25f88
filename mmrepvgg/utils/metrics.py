"""Error measures shared by the deploy layer and the studies in projects/."""
from __future__ import annotations

import math
from typing import Sequence, Union

from torch import Tensor

#: One tensor or several (compared pairwise).
Tensors = Union[Tensor, Sequence[Tensor]]


def tensor_sqnr_db(reference: Tensors, output: Tensors) -> float:
    """Signal-to-quantization-noise ratio in dB of ``output`` against ``reference``.

    The one SQNR of the package: quantized weights here, int8 model outputs in
    :mod:`mmrepvgg.deploy.quantize` and the QARepVGG comparison.

    Args:
        reference: The exact tensor(s).
        output: The approximation(s), pairwise of the same shapes.

    Returns:
        ``10 log10(sum ref^2 / sum (out - ref)^2)`` over all the tensors, in float64:
        ``inf`` if ``output`` equals ``reference`` exactly, ``-inf`` if only the reference
        is zero.
    """
    reference = [reference] if isinstance(reference, Tensor) else list(reference)
    output = [output] if isinstance(output, Tensor) else list(output)
    if len(reference) != len(output):
        raise ValueError(f'{len(reference)} reference tensors but {len(output)} outputs')
    signal = sum(r.detach().double().pow(2).sum().item() for r in reference)
    noise = sum((o.detach().double() - r.detach().double()).pow(2).sum().item()
                for r, o in zip(reference, output))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf

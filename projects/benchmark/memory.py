"""Peak inference memory of the feature maps (paper Fig. 3).

Fig. 3's point: a multi-branch block keeps its input and every branch output alive until
the addition, a plain block frees its input as soon as its conv is done. What is measured:

- **Feature maps, on any device**: :class:`LiveTensorTracker` (a ``TorchDispatchMode``)
  records every tensor storage that an aten op creates during the forward and drops it when
  it is freed; the peak is the largest total of storages alive at once. Weights and the
  input existed before and are not counted; scratch memory that a library allocates inside
  an op (cuDNN workspace, oneDNN buffers) is invisible to it. It is exact for what it counts
  and independent of the allocator, so plain and multi-branch models compare fairly: this is
  Fig. 3's "extra memory occupied by feature maps".
- **Allocator peak, on CUDA, reported separately**: ``torch.cuda.max_memory_allocated()``
  during one forward minus what was allocated before it (weights and input): the peak of
  the caching allocator's live bytes, cuDNN workspaces included. On a large GPU the
  workspace can dominate it (the same peak for the multi-branch and the plain model), so it
  is not Fig. 3's quantity.

Both run under ``torch.no_grad()`` (inference: no activation is kept for backward).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorTracker(TorchDispatchMode):
    """Track the bytes of tensor storages created inside the mode and still alive.

    Attributes:
        current: Bytes alive now.
        peak: Most bytes alive at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[StorageWeakRef, int] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for ref in [r for r in self._live if r.expired()]:
            self.current -= self._live.pop(ref)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._sweep()
        # views and in-place ops return an input's storage: nothing new was allocated
        inputs = {StorageWeakRef(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, Tensor) and t.device.type != 'meta'}
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.device.type != 'meta':
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref not in self._live and ref not in inputs:
                    self._live[ref] = storage.nbytes()
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def peak_forward_memory(run: Callable[[], Any], device: str | torch.device = 'cpu') -> dict:
    """Peak extra memory of one inference forward.

    Args:
        run: Calls the model once on a prepared input (e.g. ``lambda: model(x)``).
        device: Where the model runs.

    Returns:
        ``dict(peak_bytes, method)`` for the feature maps (``method`` is
        ``'dispatch-tracked tensor storages'``), and on CUDA also ``allocator_peak_bytes``
        and ``allocator_method``.
    """
    device = torch.device(device)
    out: dict = {}
    with torch.no_grad():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            result = run()
            torch.cuda.synchronize(device)
            out.update(allocator_peak_bytes=int(torch.cuda.max_memory_allocated(device) - base),
                       allocator_method='torch.cuda.max_memory_allocated minus allocated '
                       'before the forward (cuDNN workspace included)')
            del result
        tracker = LiveTensorTracker()
        with tracker:
            result = run()
        del result
    return dict(peak_bytes=int(tracker.peak), method='dispatch-tracked tensor storages', **out)

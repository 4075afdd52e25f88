"""Peak inference memory of the feature maps (paper Fig. 3).

Fig. 3's point: a multi-branch block keeps its input and every branch output alive until
the addition, a plain block frees its input as soon as its conv is done. What is measured:

- **CUDA**: ``torch.cuda.max_memory_allocated()`` during one forward minus what was allocated
  before it (weights and input): the peak of the caching allocator's live bytes, cuDNN
  workspaces included.
- **CPU**: PyTorch has no CPU allocator statistics, so :class:`LiveTensorTracker` (a
  ``TorchDispatchMode``) records every tensor storage that an aten op creates during the
  forward and drops it when it is freed; the peak is the largest total of storages alive at
  once. Weights and the input existed before and are not counted; scratch memory that a
  backend allocates inside an op (oneDNN buffers) is invisible to it. It is exact for what it
  counts and independent of the allocator, so plain and multi-branch models compare fairly.

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
        ``dict(peak_bytes, method)``; ``method`` is ``'cuda.max_memory_allocated'`` or
        ``'dispatch-tracked tensor storages'``.
    """
    device = torch.device(device)
    with torch.no_grad():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            out = run()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
            del out
            return dict(peak_bytes=int(peak), method='cuda.max_memory_allocated')
        tracker = LiveTensorTracker()
        with tracker:
            out = run()
        del out
        return dict(peak_bytes=int(tracker.peak), method='dispatch-tracked tensor storages')

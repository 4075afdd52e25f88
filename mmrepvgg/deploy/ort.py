"""ONNX Runtime sessions and what an ONNX file says about itself (input name, metadata).

onnx and onnxruntime are optional (``requirements/deploy.txt``) and imported when first used.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..utils.optional import require


def create_session(model: str | os.PathLike | bytes | Any, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for a model file, serialized bytes or ``ModelProto``.

    Its worker threads stop spinning when a run ends (``session.force_spinning_stop``).
    ONNX Runtime's default keeps them spinning for the next run, which is right for one
    session alone but makes sessions of one process steal each other's cores: timed in
    turns (the benchmark's fp32 and int8 backends, ``tools/quantize.py --eval``), the idle
    session's spinning pool slowed the running one, the short int8 runs most (RepVGG-A0,
    batch 1, 2 threads: int8 2.08x fp32 with the default, 2.87x with this, 3.02x with each
    session alone in its own process: projects/int8_settings/thread_pools.py).

    Args:
        model: The model.
        threads: Intra-op threads (None: ONNX Runtime's default, one per physical core).

    Returns:
        An ``onnxruntime.InferenceSession`` on ``CPUExecutionProvider``.
    """
    ort = require('onnxruntime')
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    opts.add_session_config_entry('session.force_spinning_stop', '1')
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not isinstance(model, (str, os.PathLike, bytes)):
        model = model.SerializeToString()
    return ort.InferenceSession(str(model) if isinstance(model, os.PathLike) else model, opts,
                                providers=['CPUExecutionProvider'])


def session_batch(session: Any) -> int | None:
    """The static batch size of a session's input (None if the batch axis is dynamic)."""
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) else None


def run_session(session: Any, x: Tensor | np.ndarray) -> Tensor:
    """Run a one-input session on a batch of any size; returns the first output (float32).

    A batch larger than a static batch axis is run in chunks (the last one padded).
    """
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    inp = session.get_inputs()[0]
    if inp.type == 'tensor(float16)':
        arr = arr.astype(np.float16)
    elif arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    static = session_batch(session)
    if static is None or static == len(arr):
        return torch.from_numpy(np.asarray(session.run(None, {inp.name: arr})[0],
                                           dtype=np.float32))
    outs = []
    for start in range(0, len(arr), static):
        chunk = arr[start:start + static]
        n = len(chunk)
        if n < static:
            chunk = np.concatenate([chunk, np.zeros((static - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(np.asarray(session.run(None, {inp.name: chunk})[0], dtype=np.float32)[:n])
    return torch.from_numpy(np.concatenate(outs))


def input_name(model: str | os.PathLike | Any) -> str:
    """The name of an ONNX model's (first) input, read from the graph (no session made)."""
    if isinstance(model, (str, os.PathLike)):
        model = require('onnx').load(str(model), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in weights)


def read_metadata(model: str | os.PathLike | Any) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file (or ``ModelProto``), JSON values decoded."""
    if isinstance(model, (str, os.PathLike)):
        model = require('onnx').load(str(model), load_external_data=False)
    out = {}
    for p in model.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    return out

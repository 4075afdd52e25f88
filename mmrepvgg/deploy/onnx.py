"""ONNX export of the folded model, verified with ONNX Runtime, with the metadata that lets
``mmrepvgg_runtime`` run the file as the config tests the model.

The library behind ``tools/export_onnx.py`` (which owns the paths and ``--force``), the
evaluation and the int8 quantization. :func:`export_onnx` takes a loaded model and returns
an :class:`ExportReport` holding the ``onnx.ModelProto``. Graph contract:

- input ``input``: the normalized NCHW tensor the model's data preprocessor makes; mean,
  std, ``bgr_to_rgb`` and the class names are in ``metadata_props`` (JSON values,
  :func:`read_metadata`);
- output ``logits``: ``model(x, mode='tensor')``: a classifier's ``(N, num_classes)``
  logits; a segmentor's decode-head logits at its own resolution, **not** resized (resize
  them bilinearly with ``align_corners`` from the metadata, then argmax, as mmseg does);
- the runtime metadata (:mod:`.runtime_meta`), unless ``runtime_meta=False``.

Two exporters: ``dynamo`` (``torch.export``, the default; needs ``onnxscript``) and
``torchscript``. Adaptive average pools (PSPNet's pyramid pooling) are plain
``AveragePool`` only where their input size is a multiple of their output size; otherwise
the TorchScript exporter refuses (:class:`ExportError`, listing the sizes that work) and
the dynamo exporter writes them exactly as gathers (a note lists the friendlier sizes).
"""
from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import functools
import io
import json
import logging
import os
import warnings
from collections import Counter
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from torch import Tensor, nn

from mmrepvgg_runtime.errors import ModelLoadError, error_message
from mmrepvgg_runtime.model import create_session as _runtime_session

from ..utils.errors import ExportError, VerificationError
from ..utils.optional import require
from .build import TensorForward, find_backbone, input_shape_from_config, tensor_outputs
from .convert import deploy_meta
from .runtime_meta import (RUNTIME_KEY, RuntimeSpec, check_runtime_shape, dataset_info,
                           preprocessing, runtime_spec, task_of)
from .verify import (BROKEN_WEIGHTS, DEFAULT_TOLERANCE, FoldReport, compare_outputs,
                     fold_and_verify)

#: The exporters :func:`export_module` knows.
EXPORTERS = ('dynamo', 'torchscript')
#: Default ONNX opset (the dynamo exporter's own).
DEFAULT_OPSET = 18
#: Max relative difference between ONNX Runtime's and PyTorch's outputs, per export dtype
#: (float16 rounds far more than float32; measured in docs/export.md).
ONNX_TOLERANCE = {'fp32': 1e-4, 'fp16': 1e-2}
INPUT_NAME = 'input'
OUTPUT_NAME = 'logits'

#: Every ONNX Runtime session of the package: worker threads stop spinning between runs, so
#: sessions timed in turns in one process do not take each other's cores (docs/int8.md).
create_session = functools.partial(_runtime_session, stop_spinning=True)


# ----------------------------------------------------------------------- sessions, files

def session_batch(session: Any) -> int | None:
    """The static batch size of a session's input (None if the batch axis is dynamic)."""
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) else None


def run_session(session: Any, x: Tensor | np.ndarray) -> Tensor:
    """Run a one-input session on a batch of any size; the first output (float32).

    A batch larger than a static batch axis is run in chunks (the last one padded).
    """
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    inp = session.get_inputs()[0]
    arr = arr.astype(np.float16 if inp.type == 'tensor(float16)' else np.float32, copy=False)
    static = session_batch(session)
    if static is None or static == len(arr):
        return torch.from_numpy(np.asarray(session.run(None, {inp.name: arr})[0], np.float32))
    outs = []
    for start in range(0, len(arr), static):
        chunk = arr[start:start + static]
        n = len(chunk)
        if n < static:
            chunk = np.concatenate([chunk, np.zeros((static - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(np.asarray(session.run(None, {inp.name: chunk})[0], np.float32)[:n])
    return torch.from_numpy(np.concatenate(outs))


def as_proto(model: str | os.PathLike | Any) -> Any:
    """An ONNX file loaded (its external data not), or a ``ModelProto`` as it is."""
    if isinstance(model, (str, os.PathLike)):
        return require('onnx').load(str(model), load_external_data=False)
    return model


def input_name(model: str | os.PathLike | Any) -> str:
    """The name of an ONNX model's (first) input, read from the graph (no session made)."""
    model = as_proto(model)
    weights = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in weights)


def read_metadata(model: str | os.PathLike | Any) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file (or ``ModelProto``), JSON values decoded."""
    out = {}
    for p in as_proto(model).metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    return out


def set_metadata(proto: Any, meta: Mapping[str, Any]) -> None:
    """Write ``meta`` into the model's ``metadata_props``, every value JSON-encoded."""
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in meta.items():
        entry = existing.get(key) or proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)


def graph_summary(proto: Any) -> dict[str, int]:
    """Node counts per op type, most frequent first."""
    return dict(Counter(n.op_type for n in proto.graph.node).most_common())


def node_module(node_name: str) -> str:
    """The module a node comes from: ``'backbone.stem.branch_reparam/Conv'`` -> its part before
    the op (for TorchScript names ``/model/backbone/.../Conv``, the scope path)."""
    return node_name.rsplit('/', 1)[0]


# ----------------------------------------------------------------------- adaptive pools

@dataclasses.dataclass
class PoolUse:
    """One call of an adaptive pool: its module name, output size and input size."""

    name: str
    output_size: tuple[int, int]
    input_size: tuple[int, int]

    def divides(self, dim: int) -> bool:
        return self.input_size[dim] % self.output_size[dim] == 0


@dataclasses.dataclass
class Probe:
    """What a shape-only forward pass saw: adaptive pools and conv calls."""

    pools: list[PoolUse]
    convs: int
    backbone_convs: int


def _pool_size(size: Any, fallback: tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return tuple(fb if s is None else int(s) for s, fb in zip(size, fallback))


def _on_meta(model: nn.Module) -> nn.Module:
    """``model`` if it is on the meta device, else a copy there that copies no data."""
    param = next(model.parameters(), None)
    if param is not None and param.device.type == 'meta':
        return model
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device='meta'), p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device='meta')
    return copy.deepcopy(model, memo)


def probe(model: nn.Module, shape: tuple[int, int]) -> Probe:
    """Run ``model`` on a ``(1, 3, H, W)`` input on the meta device (no compute, no memory):
    every adaptive pool's input and output size, and the conv calls (all, and in the
    backbone). A model not on the meta device is copied there first."""
    meta = _on_meta(model)
    backbone = find_backbone(meta)
    in_backbone = {id(m) for m in backbone.modules()} if backbone is not None else set()
    names = {m: n for n, m in meta.named_modules()}
    pools: list[PoolUse] = []
    convs = [0, 0]

    def pool_hook(module: nn.Module, args: tuple) -> None:
        size = tuple(int(s) for s in args[0].shape[-2:])
        pools.append(PoolUse(names[module], _pool_size(module.output_size, size), size))

    def conv_hook(module: nn.Module, args: tuple) -> None:
        convs[0] += 1
        convs[1] += id(module) in in_backbone

    handles = []
    for m in meta.modules():
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            handles.append(m.register_forward_pre_hook(pool_hook))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_pre_hook(conv_hook))
    try:
        with torch.no_grad():
            TensorForward(meta)(torch.empty(1, 3, *shape, device='meta'))
    finally:
        for h in handles:
            h.remove()
    return Probe(pools, convs[0], convs[1])


def _ranges(values: Sequence[int]) -> str:
    out, run = [], [values[0]] if values else []
    for v in values[1:]:
        if v == run[-1] + 1:
            run.append(v)
        else:
            out.append(run)
            run = [v]
    if run:
        out.append(run)
    return ', '.join(f'{r[0]}-{r[-1]}' if len(r) > 1 else str(r[0]) for r in out)


def pool_friendly_sizes(model: nn.Module, shape: tuple[int, int], span: int = 64) -> dict:
    """Input heights and widths near ``shape`` at which every adaptive pool divides its input.

    Height and width are independent (each depends only on the convs' strides along it),
    so each is searched with the other one fixed, by :func:`probe`.

    Args:
        model: The model.
        shape: The requested ``(H, W)``.
        span: How far to search on each side.

    Returns:
        ``{'height': [...], 'width': [...]}``: the nearest run of working sizes below and
        above the requested one (each may be empty).
    """
    model = _on_meta(model)
    out = {}
    for dim, key in ((0, 'height'), (1, 'width')):
        def ok(n: int) -> bool:
            size = list(shape)
            size[dim] = n
            return all(p.divides(dim) for p in probe(model, tuple(size)).pools)

        found = []
        for step in (-1, 1):
            n = shape[dim] + step
            while 8 <= n and abs(n - shape[dim]) <= span and not ok(n):
                n += step
            if n < 8 or abs(n - shape[dim]) > span:
                continue
            run = [n]
            while len(run) < 16 and ok(run[-1] + step):
                run.append(run[-1] + step)
            found += run
        out[key] = sorted(set(found))
    return out


def check_adaptive_pools(model: nn.Module, shape: tuple[int, int], exporter: str,
                         seen: Probe | None = None) -> str | None:
    """Check that the adaptive pools can be exported at ``shape`` by ``exporter``.

    Args:
        model: The model.
        shape: Input ``(H, W)``.
        exporter: ``'torchscript'`` (refuses) or ``'dynamo'`` (exports them exactly as gathers).
        seen: A :func:`probe` at ``shape`` (made here if None).

    Returns:
        None if every pool divides its input; else (dynamo) a one-line note.

    Raises:
        ExportError: For the TorchScript exporter, with the sizes that work.
    """
    seen = seen or probe(model, shape)
    bad = [p for p in seen.pools if not (p.divides(0) and p.divides(1))]
    if not bad:
        return None
    owners = sorted({p.name.rsplit('.', 2)[0] for p in bad})
    outs = sorted({p.output_size for p in seen.pools})
    sizes = pool_friendly_sizes(model, shape)
    where = (f'input heights {_ranges(sizes["height"]) or "none nearby"} and widths '
             f'{_ranges(sizes["width"]) or "none nearby"}')
    what = (f'the adaptive pools of {", ".join(owners)} (output sizes '
            f'{", ".join("x".join(map(str, o)) for o in outs)}) get a '
            f'{bad[0].input_size[0]}x{bad[0].input_size[1]} map at {shape[0]}x{shape[1]}, '
            'not a multiple of their output sizes')
    if exporter == 'torchscript':
        raise ExportError(f'Cannot export at {shape[0]}x{shape[1]} with the TorchScript '
                             f'exporter: {what}. Sizes that work: {where} (--shape H W), or '
                             'use --exporter dynamo, which exports them exactly as gathers')
    return (f'{what}: exported exactly as gathers and means (slower than AveragePool); '
            f'sizes where they are plain AveragePool: {where}')


# ----------------------------------------------------------------------- export

def export_module(module: nn.Module, example: Tensor, exporter: str = 'dynamo',
                  opset: int = DEFAULT_OPSET, dynamic_batch: bool = False) -> Any:
    """Export a one-tensor-in, one-tensor-out module to an in-memory ``onnx.ModelProto``.

    Args:
        module: The module (eval mode); called as ``module(x)``.
        example: An example input; its shape is the graph's (but see ``dynamic_batch``).
        exporter: ``'dynamo'`` or ``'torchscript'``.
        opset: ONNX opset.
        dynamic_batch: Make the batch axis dynamic.

    Returns:
        The model, weights inside (no external data). Dynamo node names are rewritten to
        ``<module path>/<op>`` (as the TorchScript exporter names them), and the node
        metadata keeps only the module scopes.
    """
    onnx = require('onnx')
    if exporter not in EXPORTERS:
        raise ValueError(f'Unknown exporter {exporter!r}; expected one of {EXPORTERS}')
    module = module.eval()
    with warnings.catch_warnings(), torch.no_grad(), _quiet_logging():
        warnings.simplefilter('ignore')
        if exporter == 'dynamo':
            require('onnxscript')
            if dynamic_batch and example.shape[0] == 1:  # torch.export specializes size 1
                example = torch.cat([example, example])
            shapes = ({0: torch.export.Dim('batch')}, ) if dynamic_batch else None
            program = torch.onnx.export(module, (example, ), dynamo=True, verbose=False,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        opset_version=opset, dynamic_shapes=shapes,
                                        external_data=False)
            proto = program.model_proto
            _name_nodes_by_module(proto)
        else:
            buf = io.BytesIO()
            axes = {INPUT_NAME: {0: 'batch'}, OUTPUT_NAME: {0: 'batch'}} if dynamic_batch else None
            torch.onnx.export(module, (example, ), buf, dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset,
                              dynamic_axes=axes)
            proto = onnx.load_from_string(buf.getvalue())
    return proto


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Silence the exporters' logging: onnxscript's version converter logs a traceback when
    it cannot reach the requested opset, which :func:`check_opset` then refuses in one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def model_opset(proto: Any) -> int | None:
    """The default-domain (``ai.onnx``) opset a ``ModelProto`` declares."""
    return next((int(o.version) for o in proto.opset_import if o.domain in ('', 'ai.onnx')),
                None)


def check_opset(proto: Any, opset: int, exporter: str) -> None:
    """Refuse a graph whose opset is not the one asked for (the dynamo exporter falls back to
    opset 18 when it cannot convert to the requested one, without an error).

    Raises:
        ExportError: In one line, saying which opsets each exporter gives.
    """
    got = model_opset(proto)
    if got != opset:
        raise ExportError(f'--opset {opset}: the {exporter} exporter wrote opset {got}, not '
                          f'{opset} (it cannot convert this model to opset {opset}); the dynamo '
                          'exporter writes opset 18 and newer (and some older ones), '
                          '--exporter torchscript opsets 7-23')


_SCOPES_KEY = 'pkg.torch.onnx.name_scopes'


def _name_nodes_by_module(proto: Any) -> None:
    """Rename dynamo's ``node_conv2d_3`` nodes to ``backbone.stem.branch_reparam/Conv``."""
    used: Counter = Counter()
    for node in proto.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        module = ''
        if _SCOPES_KEY in props:
            try:  # a Python list literal: "['', 'model', 'model.backbone', ...]"
                scopes = ast.literal_eval(props[_SCOPES_KEY])
            except (ValueError, SyntaxError):
                scopes = []
            module = scopes[-2] if len(scopes) >= 2 else ''
            module = module[len('model.'):] if module.startswith('model.') else module
            module = '' if module == 'model' else module
        name = f'{module}/{node.op_type}' if module else f'/{node.op_type}'
        used[name] += 1
        node.name = name if used[name] == 1 else f'{name}_{used[name] - 1}'
        keep = [p for p in node.metadata_props if p.key in (_SCOPES_KEY, 'namespace')]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)


@dataclasses.dataclass
class ExportOptions:
    """How to export (``tools/export_onnx.py``'s options).

    Args:
        shape: Input ``(H, W)``; None: what the network sees under the config's test
            behaviour (:func:`runtime_input_shape`), without ``runtime_meta`` the config's
            test crop (:func:`~mmrepvgg.deploy.build.input_shape_from_config`).
        batch: Batch of the graph (of the example, if ``dynamic_batch``).
        dynamic_batch: Make the batch axis dynamic.
        opset: ONNX opset (honoured or refused).
        fp16: Export in float16 (input and output float16 too).
        exporter: ``'dynamo'`` or ``'torchscript'``.
        tolerance: Max relative ONNX-vs-PyTorch difference (None: :data:`ONNX_TOLERANCE`).
        fold_tolerance: Max relative difference of the folding (None: report only).
        seed: Seed of the verification input.
        runtime_meta: Write the test behaviour for ``mmrepvgg_runtime``, refusing a config
            or ``shape`` the runtime cannot run as the config tests the model.
    """

    shape: tuple[int, int] | None = None
    batch: int = 1
    dynamic_batch: bool = False
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    exporter: str = 'dynamo'
    tolerance: float | None = None
    fold_tolerance: float | None = DEFAULT_TOLERANCE
    seed: int = 0
    runtime_meta: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.batch, int) or isinstance(self.batch, bool) or self.batch < 1:
            raise ValueError(f'batch must be an int >= 1, got {self.batch!r}')
        if self.exporter not in EXPORTERS:
            raise ValueError(f'Unknown exporter {self.exporter!r}; expected one of {EXPORTERS}')
        if self.tolerance is None:
            self.tolerance = ONNX_TOLERANCE[self.dtype]

    @property
    def dtype(self) -> str:
        return 'fp16' if self.fp16 else 'fp32'


@dataclasses.dataclass
class ExportReport:
    """What :func:`export_onnx` made and measured.

    Args:
        proto: The verified ``onnx.ModelProto``, metadata included.
        options: The export options (``shape`` set to the size exported at).
        fold: Training-time vs folded PyTorch model (None for a deployed checkpoint).
        max_abs: ONNX Runtime vs the PyTorch model the checkpoint holds, max abs difference.
        max_rel: ``max_abs`` relative to the largest reference output.
        nodes: Node counts per op type.
        blocks: RepVGG blocks of the backbone.
        backbone_convs: Conv calls inside the folded backbone.
        output_shape: Shape of the ONNX output on the example.
        note: A note about the export (adaptive pools exported as gathers), or ''.
        model: The folded PyTorch model.
        out: Where the caller wrote the file (for :meth:`summary`).
    """

    proto: Any = dataclasses.field(repr=False)
    options: ExportOptions
    fold: FoldReport | None
    max_abs: float
    max_rel: float
    nodes: dict[str, int]
    blocks: int
    backbone_convs: int
    output_shape: tuple[int, ...]
    note: str = ''
    model: nn.Module | None = dataclasses.field(default=None, repr=False, compare=False)
    out: str = ''

    @property
    def shape(self) -> tuple[int, int]:
        return self.options.shape

    @property
    def opset(self) -> int:
        return self.options.opset

    @property
    def deployed_checkpoint(self) -> bool:
        return self.fold is None

    def summary(self) -> str:
        o = self.options
        other = ', '.join(f'{k} {v}' for k, v in self.nodes.items()
                          if k not in ('Conv', 'BatchNormalization'))
        lines = [
            f'exported {self.out} ({o.exporter} exporter, opset {o.opset}, {o.dtype}, input '
            f'{"N" if o.dynamic_batch else o.batch}x3x{o.shape[0]}x{o.shape[1]}, output '
            f'{"x".join(map(str, self.output_shape))})',
            'checkpoint already deployed' if self.fold is None else self.fold.summary(),
            f'ONNX Runtime (CPU) vs PyTorch '
            f'{"deployed" if self.fold is None else "training-time"} model: max abs diff '
            f'{self.max_abs:.3g}, max rel diff {self.max_rel:.3g} (tolerance {o.tolerance:g})',
            f'graph: {self.nodes.get("Conv", 0)} Conv (backbone: {self.backbone_convs} for '
            f'{self.blocks} RepVGG blocks), {self.nodes.get("BatchNormalization", 0)} '
            f'BatchNormalization; other: {other or "none"}']
        return '\n'.join(lines + ([f'note: {self.note}'] if self.note else []))


#: Why ONNX Runtime's outputs can be NaN or Inf where PyTorch's are not, per export dtype.
_ORT_CAUSE = {'fp32': 'the exported graph computes what PyTorch does not',
              'fp16': 'float16 overflows on this model'}


def check_against_pytorch(reference: Sequence[Tensor], outputs: Sequence[Tensor],
                          dtype: str = 'fp32', tolerance: float | None = None,
                          where: str = '') -> tuple[float, float]:
    """Compare ONNX Runtime's outputs with PyTorch's on the same input.

    Args:
        reference: PyTorch's outputs.
        outputs: ONNX Runtime's.
        dtype: The graph's dtype, ``'fp32'`` or ``'fp16'``.
        tolerance: Max relative difference (default :data:`ONNX_TOLERANCE`).
        where: The inputs, for the message (e.g. ``' on the test images'``).

    Returns:
        ``(max_abs, max_rel)``.

    Raises:
        VerificationError: If they differ by more than ``tolerance``, in number or shape,
            or any value is NaN or Inf.
    """
    tolerance = ONNX_TOLERANCE[dtype] if tolerance is None else tolerance
    max_abs, max_rel = compare_outputs(reference, outputs,
                                       ('of PyTorch', f'of ONNX Runtime ({dtype})'),
                                       (BROKEN_WEIGHTS, _ORT_CAUSE[dtype]))
    if not max_rel <= tolerance:
        raise VerificationError(f'ONNX Runtime does not reproduce PyTorch{where}: max rel diff '
                                f'{max_rel:.3g} > {tolerance:g} (max abs {max_abs:.3g})')
    return max_abs, max_rel


def _export_shape(model: nn.Module, cfg: Config, opts: ExportOptions,
                  checkpoint_meta: Mapping) -> tuple[tuple[int, int], RuntimeSpec | None]:
    """The input size, and the runtime metadata (None without ``runtime_meta``)."""
    if not opts.runtime_meta:
        return tuple(opts.shape or input_shape_from_config(cfg)), None
    spec = runtime_spec(cfg, model, dataset_info(cfg, 'classes', checkpoint_meta),
                        dataset_info(cfg, 'palette', checkpoint_meta), opts.dtype)
    return check_runtime_shape(spec, opts.shape, cfg.filename or 'the config'), spec


def _export_graph(module: nn.Module, example: Tensor, opts: ExportOptions, convs: int) -> Any:
    """The exported ``ModelProto``, checked: the opset asked for, no BN, every conv a Conv."""
    print_log(f'Exporting with the {opts.exporter} exporter (opset {opts.opset}) at '
              f'{opts.batch}x3x{opts.shape[0]}x{opts.shape[1]}'
              f'{" (dynamic batch)" if opts.dynamic_batch else ""}, {opts.dtype}',
              logger='current')
    try:
        proto = export_module(module, example, opts.exporter, opts.opset, opts.dynamic_batch)
    except ImportError:
        raise
    except Exception as err:  # exporter failures carry long traces: keep their first line
        raise ExportError(f'torch.onnx.export ({opts.exporter}) failed: '
                          f'{error_message(err)}') from err
    check_opset(proto, opts.opset, opts.exporter)
    nodes = graph_summary(proto)
    if nodes.get('BatchNormalization', 0) or nodes.get('Conv', 0) != convs:
        raise VerificationError(
            f'The exported graph is not the folded model: {nodes.get("Conv", 0)} Conv nodes for '
            f'{convs} conv calls, {nodes.get("BatchNormalization", 0)} BatchNormalization')
    return proto


def _verify_in_onnxruntime(proto: Any, x: Tensor, reference: list[Tensor],
                           opts: ExportOptions) -> tuple[float, float, Tensor]:
    """ONNX Runtime's output on ``x`` against PyTorch's (and a larger batch, if dynamic)."""
    try:
        session = create_session(proto)
    except ModelLoadError as err:  # e.g. an opset ONNX Runtime does not run
        raise ExportError(f'The exported graph (opset {opts.opset}) does not run: '
                          f'{error_message(err)}') from err
    got = run_session(session, x)
    max_abs, max_rel = check_against_pytorch(reference, [got], opts.dtype, opts.tolerance)
    if opts.dynamic_batch:  # one more row than the example: the batch axis really is free
        x2 = torch.cat([x, x[:1]])
        got2 = run_session(session, x2)
        cause = _ORT_CAUSE[opts.dtype]
        if got2.shape[0] != x2.shape[0] or not compare_outputs(
                [got], [got2[:opts.batch]], (f'at batch {opts.batch}',
                                             f'at batch {opts.batch + 1}'),
                (cause, cause))[1] <= 1e-5:
            raise VerificationError('The dynamic-batch graph does not run a larger batch alike')
    return max_abs, max_rel, got


def _file_meta(model: nn.Module, cfg: Config, opts: ExportOptions, checkpoint_meta: Mapping,
               checkpoint: str) -> dict:
    """The ``metadata_props`` of the file: task, preprocessing, classes, arch, exporter."""
    head = getattr(model, 'decode_head', None)
    meta = dict(
        task=task_of(model), input_name=INPUT_NAME, output_name=OUTPUT_NAME,
        input_layout='NCHW', input_dtype='float16' if opts.fp16 else 'float32',
        input_shape=['batch' if opts.dynamic_batch else opts.batch, 3, *opts.shape],
        preprocessing='input = (image - mean) / std, channels in RGB order if bgr_to_rgb '
        '(images read as BGR, e.g. by OpenCV), NCHW',
        **preprocessing(cfg),
        classes=[str(c) for c in dataset_info(cfg, 'classes', checkpoint_meta) or []] or None,
        output=('logits (N, num_classes)' if head is None else
                "decode-head logits (N, num_classes, h, w) at the decode head's resolution "
                '(not resized): resize bilinearly to the input size with align_corners, then '
                'argmax over classes'),
        **deploy_meta(model, cfg, source_checkpoint=checkpoint, exporter=opts.exporter,
                      opset=opts.opset, folded_blocks=backbone_blocks(model)))
    if head is not None:
        meta['align_corners'] = bool(getattr(head, 'align_corners', False))
    meta.pop('config', None)  # the config text is long; its file name stays
    return meta


def backbone_blocks(model: nn.Module) -> int:
    """Blocks of the RepVGG backbone: the stem plus every layer of every stage."""
    backbone = find_backbone(model)
    if backbone is None:
        return 0
    return 1 + sum(len(getattr(backbone, name)) for name in backbone.stage_names)


def export_onnx(model: nn.Module, cfg: Config, options: ExportOptions | None = None,
                deployed: bool = False, checkpoint_meta: Mapping | None = None,
                checkpoint: str = '') -> ExportReport:
    """A loaded model -> folded model -> verified ``onnx.ModelProto`` with its metadata.

    A training-time model is folded in place and verified as ``tools/deploy_convert.py
    --verify`` does; the graph is checked (``onnx.checker``, the opset, no
    BatchNormalization, one Conv per conv call of the folded model) and ONNX Runtime's
    output on a random input compared with the model the checkpoint holds.

    Args:
        model: The model (:func:`~mmrepvgg.deploy.build.load_model`), folded iff ``deployed``.
        cfg: Its config (test behaviour, preprocessing, class names).
        options: :class:`ExportOptions` (default: the config's size, dynamo, fp32).
        deployed: The model is already folded.
        checkpoint_meta: The checkpoint's meta (class names, palette).
        checkpoint: The checkpoint's name, recorded in the metadata.

    Returns:
        An :class:`ExportReport` (``report.proto`` is the model to write).

    Raises:
        VerificationError: Folding or ONNX Runtime differ by more than the tolerance, or
            the graph is not the folded one.
        ExportError: The exporter fails, cannot write the opset, or ``onnx.checker`` rejects
            the graph.
        ExportError: The TorchScript exporter cannot export the adaptive pools at the size.
        ExportError: ``runtime_meta`` and the test behaviour (or ``shape``) has no
            runtime equivalent.
        MissingDependencyError: onnx, onnxruntime (or onnxscript for dynamo) is missing.
    """
    onnx = require('onnx')
    require('onnxruntime')
    opts = dataclasses.replace(options or ExportOptions())
    checkpoint_meta = checkpoint_meta or {}
    opts.shape, spec = _export_shape(model, cfg, opts, checkpoint_meta)
    seen = probe(model, opts.shape)  # shapes only (meta device): refuse before any compute
    note = check_adaptive_pools(model, opts.shape, opts.exporter, seen) or ''
    if note:
        print_log(f'note: {note}', logger='current')
    x = torch.randn(opts.batch, 3, *opts.shape, generator=torch.Generator().manual_seed(opts.seed))
    reference = tensor_outputs(model, x)
    fold = None
    if not deployed:
        fold = fold_and_verify(model, x, tolerance=opts.fold_tolerance)
        print_log(fold.summary(), logger='current')
        seen = probe(model, opts.shape)  # the folded model's convs
    module = TensorForward(copy.deepcopy(model).half() if opts.fp16 else model).eval()
    proto = _export_graph(module, x.half() if opts.fp16 else x, opts, seen.convs)
    max_abs, max_rel, got = _verify_in_onnxruntime(proto, x, reference, opts)
    meta = _file_meta(model, cfg, opts, checkpoint_meta, checkpoint)
    if spec is not None:
        meta[RUNTIME_KEY] = spec.to_dict()
    set_metadata(proto, dict(meta, ort_max_abs_diff=max_abs, ort_max_rel_diff=max_rel))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f'onnx.checker rejects the exported model: '
                          f'{error_message(err)}') from err
    return ExportReport(proto, opts, fold, max_abs, max_rel, graph_summary(proto),
                        backbone_blocks(model), seen.backbone_convs, tuple(got.shape), note,
                        model)

"""ONNX export of the folded (deployed) model, verified with ONNX Runtime.

Library behind ``tools/export_onnx.py`` (and the ONNX Runtime backend of
``tools/benchmark.py``, and ``tools/quantize.py``). The exported graph is always the
**folded** model: a training-time checkpoint (any layout ``tools/deploy_convert.py``
accepts) is folded and verified exactly as ``deploy_convert`` does, a deployed checkpoint
(``branch_reparam`` keys) is loaded into the plain model directly.

Graph contract:

- input ``input``: the normalized NCHW float tensor the model's data preprocessor makes,
  ``(image - mean) / std`` in RGB order if ``bgr_to_rgb`` (images read as BGR); mean, std,
  ``bgr_to_rgb`` and the class names are in the model's ``metadata_props`` (JSON values,
  :func:`read_metadata`), so a user can preprocess without the config;
- output ``logits``: what ``model(x, mode='tensor')`` returns. For a classifier the
  ``(N, num_classes)`` logits; for a segmentor the decode head's logits at its own
  resolution (1/8 of the input for PSPNet), **not** resized to the input: resize them
  bilinearly to the input size (``align_corners`` in the metadata) and take the argmax over
  classes, as mmseg's ``EncoderDecoder`` does.

Two exporters: ``dynamo`` (``torch.export``, the default; needs ``onnxscript``) and
``torchscript`` (``dynamo=False``). Adaptive average pools (PSPNet's pyramid pooling) are
plain ``AveragePool`` nodes only where their input size is a multiple of their output size;
otherwise the TorchScript exporter cannot export them (:func:`check_adaptive_pools` refuses
with a one-line error that lists the input sizes that work) and the dynamo exporter writes
them exactly as gathers and means (slower; a note lists the friendlier sizes).
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import io
import os
import warnings
from collections import Counter
from typing import Any, Callable, Sequence

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from torch import Tensor, nn

from ..utils.errors import ExportError, VerificationError
from ..utils.fileio import check_output_path, write_bytes_atomic
from ..utils.optional import require
from .build import input_shape_from_config
from .convert import deploy_meta, load_model, source_files
from .forward import TensorForward, tensor_outputs
from .metadata import backbone_blocks, class_names, preprocess_meta, set_metadata, task_of
from .ort import create_session, run_session
from .pools import check_adaptive_pools, probe
from .verify import (BROKEN_WEIGHTS, DEFAULT_TOLERANCE, FoldReport, compare_outputs,
                     fold_and_verify)

#: The exporters :func:`export_module` knows.
EXPORTERS = ('dynamo', 'torchscript')
#: Default ONNX opset (the dynamo exporter's minimum; ONNX Runtime 1.31 runs up to 23).
DEFAULT_OPSET = 18
#: Max relative difference between ONNX Runtime's and PyTorch's outputs, per export dtype.
#: fp32 agrees to ~1e-6; an fp16 graph measures ~1e-3 on RepVGG-A0 (docs/export.md).
ONNX_TOLERANCE = {'fp32': 1e-4, 'fp16': 1e-2}
INPUT_NAME = 'input'
OUTPUT_NAME = 'logits'







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
    with warnings.catch_warnings(), torch.no_grad():
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


def node_module(node_name: str) -> str:
    """The module a node comes from: ``'backbone.stem.branch_reparam/Conv'`` -> its part before
    the op (for TorchScript names ``/model/backbone/.../Conv``, the scope path)."""
    return node_name.rsplit('/', 1)[0]


def graph_summary(proto: Any) -> dict[str, int]:
    """Node counts per op type, most frequent first."""
    return dict(Counter(n.op_type for n in proto.graph.node).most_common())



@dataclasses.dataclass
class ExportReport:
    """What :func:`export_onnx` did and measured.

    Args:
        out: The written file.
        shape: Input ``(H, W)``.
        batch: Batch of the example (and of the graph unless ``dynamic_batch``).
        dynamic_batch: Whether the batch axis is dynamic.
        dtype: ``'fp32'`` or ``'fp16'``.
        exporter: ``'dynamo'`` or ``'torchscript'``.
        opset: ONNX opset.
        deployed_checkpoint: The checkpoint was already folded.
        fold: Training-time vs folded PyTorch model (None for a deployed checkpoint).
        max_abs: ONNX Runtime vs the PyTorch model the checkpoint holds (training-time or
            deployed), max absolute difference.
        max_rel: ``max_abs`` relative to the largest reference output.
        tolerance: Bound on ``max_rel``.
        nodes: Node counts per op type.
        blocks: RepVGG blocks of the backbone.
        backbone_convs: Conv calls inside the folded backbone.
        output_shape: Shape of the ONNX output on the example.
        note: A note about the export (adaptive pools exported as gathers), or ''.
        model: The folded PyTorch model (not printed).
    """

    out: str
    shape: tuple[int, int]
    batch: int
    dynamic_batch: bool
    dtype: str
    exporter: str
    opset: int
    deployed_checkpoint: bool
    fold: FoldReport | None
    max_abs: float
    max_rel: float
    tolerance: float
    nodes: dict[str, int]
    blocks: int
    backbone_convs: int
    output_shape: tuple[int, ...]
    note: str = ''
    model: nn.Module | None = dataclasses.field(default=None, repr=False, compare=False)

    def summary(self) -> str:
        other = ', '.join(f'{k} {v}' for k, v in self.nodes.items()
                          if k not in ('Conv', 'BatchNormalization'))
        lines = [
            f'exported {self.out} ({self.exporter} exporter, opset {self.opset}, {self.dtype}, '
            f'input {"N" if self.dynamic_batch else self.batch}x3x{self.shape[0]}x'
            f'{self.shape[1]}, output {"x".join(map(str, self.output_shape))})',
            ('checkpoint already deployed' if self.fold is None else self.fold.summary()),
            f'ONNX Runtime (CPU) vs PyTorch '
            f'{"deployed" if self.fold is None else "training-time"} model: max abs diff '
            f'{self.max_abs:.3g}, max rel diff {self.max_rel:.3g} (tolerance {self.tolerance:g})',
            f'graph: {self.nodes.get("Conv", 0)} Conv (backbone: {self.backbone_convs} for '
            f'{self.blocks} RepVGG blocks), {self.nodes.get("BatchNormalization", 0)} '
            f'BatchNormalization; other: {other or "none"}']
        if self.note:
            lines.append(f'note: {self.note}')
        return '\n'.join(lines)


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


def export_onnx(config: str | Config,
                checkpoint: str | os.PathLike,
                out: str | os.PathLike,
                shape: tuple[int, int] | None = None,
                batch: int = 1,
                dynamic_batch: bool = False,
                opset: int = DEFAULT_OPSET,
                fp16: bool = False,
                exporter: str = 'dynamo',
                force: bool = False,
                trust: bool = False,
                source: str | None = None,
                tolerance: float | None = None,
                fold_tolerance: float | None = DEFAULT_TOLERANCE,
                seed: int = 0,
                loaded: tuple[nn.Module, bool, dict] | None = None) -> ExportReport:
    """Checkpoint -> folded model -> verified ONNX file.

    Loads the checkpoint strictly (training-time: folded and verified as
    ``tools/deploy_convert.py --verify`` does; deployed: loaded into the plain model),
    exports ``model(x, mode='tensor')``, checks the graph (``onnx.checker``; no
    BatchNormalization; as many Conv nodes as the folded model calls convs), runs ONNX
    Runtime on the same random input as PyTorch and compares with the model the checkpoint
    holds, then writes the file atomically (:func:`mmrepvgg.utils.fileio.write_atomic`, the one
    writer of every output) with the preprocessing and class names in its metadata.

    Args:
        config: mmseg or mmpretrain config (path or Config) with a RepVGG backbone.
        checkpoint: Training-time or deployed checkpoint.
        out: The ONNX file to write.
        shape: Input ``(H, W)``; default: the config's test crop
            (:func:`~mmrepvgg.deploy.input_shape_from_config`).
        batch: Batch of the graph (of the example, if ``dynamic_batch``).
        dynamic_batch: Make the batch axis dynamic.
        opset: ONNX opset.
        fp16: Export the model in float16 (input and output float16 too).
        exporter: ``'dynamo'`` or ``'torchscript'``.
        force: Overwrite ``out``.
        trust: Allow full unpickling of the checkpoint.
        source: Checkpoint layout; None: detect it.
        tolerance: Max relative ONNX-vs-PyTorch difference (default :data:`ONNX_TOLERANCE`).
        fold_tolerance: Max relative difference of the folding (None: report only).
        seed: Seed of the verification input.
        loaded: What :func:`~mmrepvgg.deploy.convert.load_model` returned for
            ``checkpoint``, if the caller has it (its model is folded in place); None: load
            it here.

    Returns:
        An :class:`ExportReport` (its ``model`` is the folded PyTorch model).

    Raises:
        FileExistsError: ``out`` exists and ``force`` is False (checked before any work, and
            again when writing: a file that appears meanwhile is not overwritten).
        SameFileError: ``out`` is the checkpoint or the config (also through a link),
            whatever ``force`` says.
        IsADirectoryError, NotADirectoryError: ``out`` cannot be a file.
        VerificationError: Folding or ONNX Runtime differ by more than the tolerance, or
            the graph is not the folded one.
        ExportError: The exporter fails or ``onnx.checker`` rejects the graph.
        PoolShapeError: The TorchScript exporter cannot export the adaptive pools at
            ``shape``.
        MissingDependencyError: onnx, onnxruntime (or onnxscript for dynamo) is missing.
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f'batch must be an int >= 1, got {batch!r}')
    sources = source_files(config, checkpoint)
    check_output_path(out, force, sources)
    onnx = require('onnx')
    require('onnxruntime')
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    dtype = 'fp16' if fp16 else 'fp32'
    tolerance = ONNX_TOLERANCE[dtype] if tolerance is None else tolerance
    model, deployed, ckpt_meta = loaded or load_model(cfg, checkpoint, source, trust)
    shape = tuple(shape or input_shape_from_config(cfg))
    seen = probe(model, shape)  # shapes only (meta device): refuse before any compute
    note = check_adaptive_pools(model, shape, exporter, seen) or ''
    if note:
        print_log(f'note: {note}', logger='current')
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *shape, generator=gen)
    reference = tensor_outputs(model, x)
    fold = None
    if not deployed:
        fold = fold_and_verify(model, x, tolerance=fold_tolerance)
        print_log(fold.summary(), logger='current')
        seen = probe(model, shape)  # the folded model's convs
    module = TensorForward(copy.deepcopy(model) if fp16 else model).eval()
    example = x
    if fp16:
        module, example = module.half(), x.half()
    print_log(f'Exporting with the {exporter} exporter (opset {opset}) at {batch}x3x{shape[0]}x'
              f'{shape[1]}{" (dynamic batch)" if dynamic_batch else ""}, {dtype}',
              logger='current')
    try:
        proto = export_module(module, example, exporter, opset, dynamic_batch)
    except ImportError:
        raise
    except Exception as err:  # exporter failures carry long traces: keep their first line
        first = next((line for line in str(err).splitlines() if line.strip()), repr(err))
        raise ExportError(f'torch.onnx.export ({exporter}) failed: {first}') from err
    nodes = graph_summary(proto)
    if nodes.get('BatchNormalization', 0) or nodes.get('Conv', 0) != seen.convs:
        raise VerificationError(
            f'The exported graph is not the folded model: {nodes.get("Conv", 0)} Conv nodes for '
            f'{seen.convs} conv calls, {nodes.get("BatchNormalization", 0)} BatchNormalization')
    pre = preprocess_meta(cfg)
    head = getattr(model, 'decode_head', None)
    meta = dict(
        task=task_of(model), input_name=INPUT_NAME, output_name=OUTPUT_NAME,
        input_layout='NCHW', input_dtype='float16' if fp16 else 'float32',
        input_shape=['batch' if dynamic_batch else batch, 3, *shape],
        preprocessing='input = (image - mean) / std, channels in RGB order if bgr_to_rgb '
        '(images read as BGR, e.g. by OpenCV), NCHW',
        mean=pre['mean'], std=pre['std'], bgr_to_rgb=pre['bgr_to_rgb'],
        classes=class_names(cfg, ckpt_meta),
        output=('logits (N, num_classes)' if head is None else
                "decode-head logits (N, num_classes, h, w) at the decode head's resolution "
                '(not resized): resize bilinearly to the input size with align_corners, then '
                'argmax over classes'),
        **deploy_meta(model, cfg, source_checkpoint=str(checkpoint), exporter=exporter,
                      opset=opset, folded_blocks=backbone_blocks(model)))
    if head is not None:
        meta['align_corners'] = bool(getattr(head, 'align_corners', False))
    meta.pop('config', None)  # the config text is long; its file name stays
    session = create_session(proto)
    got = run_session(session, x)
    max_abs, max_rel = check_against_pytorch(reference, [got], dtype, tolerance)
    if dynamic_batch:  # one more row than the example: the batch axis really is free
        x2 = torch.cat([x, x[:1]])
        got2 = run_session(session, x2)
        if got2.shape[0] != x2.shape[0] or not compare_outputs(
                [got], [got2[:batch]], (f'at batch {batch}', f'at batch {batch + 1}'),
                (_ORT_CAUSE[dtype], _ORT_CAUSE[dtype]))[1] <= 1e-5:
            raise VerificationError('The dynamic-batch graph does not run a larger batch alike')
    meta.update(ort_max_abs_diff=max_abs, ort_max_rel_diff=max_rel)
    set_metadata(proto, meta)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        first = next((line for line in str(err).splitlines() if line.strip()), repr(err))
        raise ExportError(f'onnx.checker rejects the exported model: {first}') from err
    write_bytes_atomic(out, proto.SerializeToString(), force=force, inputs=sources)
    report = ExportReport(str(out), shape, batch, dynamic_batch, dtype, exporter, opset,
                          deployed, fold, max_abs, max_rel, tolerance, nodes,
                          backbone_blocks(model), seen.backbone_convs, tuple(got.shape),
                          note, model)
    print_log(report.summary(), logger='current')
    return report


def export_for_timing(module: nn.Module, example: Tensor, threads: int | None = None,
                      exporter: str = 'dynamo',
                      transform: Callable[[Any], Any] | None = None) -> Any:
    """An ONNX Runtime session of ``module`` with a dynamic batch (for the benchmark).

    Args:
        module: A one-tensor module in eval mode (e.g. ``TensorForward``).
        example: One example batch.
        threads: Session intra-op threads.
        exporter: The exporter.
        transform: Applied to the ``ModelProto`` before the session is made (e.g. int8
            quantization).

    Returns:
        The session.
    """
    proto = export_module(module, example, exporter, dynamic_batch=True)
    if transform is not None:
        proto = transform(proto)
    return create_session(proto, threads)

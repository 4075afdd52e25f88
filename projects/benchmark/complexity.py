"""Params, theoretical FLOPs and Wino MULs in the paper's convention (Sect. 2.4, Table 4).

Counting conventions (the paper's; see docs/benchmark.md):

- **FLOPs** are the multiply-adds of the conv and fully-connected layers, a multiply-add
  counting once (paper footnote 2). They are counted by :class:`mmengine.analysis.FlopAnalyzer`
  (``aten::_convolution``, ``aten::linear``/``addmm``/``matmul``/``bmm``/``einsum``), which
  counts ``N * H_out * W_out * C_out * C_in / groups * k_h * k_w`` per conv and ignores biases.
  BN, pooling, upsampling, ReLU and additions are left out of ``flops`` (the paper counts only
  convs and FC) but are reported in ``flops_all``, mmengine's total with its default handles
  (an affine BN in eval mode costs 2 per element there; ReLU and ``add`` are not
  counted at all).
- **Wino MULs** are the multiplications when every 3x3 conv with stride 1 and dilation 1
  runs as F(2x2, 3x3) Winograd, which needs 4/9 of the direct multiplications; every other
  conv (1x1, strided, dilated, 7x7) and the FC layers cost their full multiply-adds. Grouped
  3x3 convs qualify (Winograd runs per group). In the training-time RepVGG each branch conv
  follows the rule (the 3x3 branch at 4/9, the 1x1 branch at full cost).
- **Params** are every parameter of the model (:func:`mmengine.analysis.parameter_count`), BN
  affine weights included (buffers such as running statistics are not parameters).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Mapping

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from torch import nn

from mmrepvgg.deploy.build import TensorForward
from mmrepvgg.models import reparameterize

from .conv_bn import fuse_conv_bn_pairs
from .markdown import fmt
from .metafile import PaperModel, find_paper_model
from .models import build_from_spec, default_input_shape, example_input

#: mmengine operator names counted as the paper's FLOPs (conv and FC multiply-adds).
MAC_OPERATORS = ('conv', 'linear', 'addmm', 'matmul', 'bmm', 'einsum')
#: F(2x2, 3x3) Winograd: 16 multiplications per 2x2 output tile instead of 36.
WINOGRAD_FACTOR = Fraction(4, 9)


def winograd_factor(conv: nn.Module) -> Fraction:
    """The fraction of a conv's multiplications left under F(2x2, 3x3) Winograd.

    Args:
        conv: A conv module.

    Returns:
        4/9 for a 2-D 3x3 conv with stride 1 and dilation 1 (any groups), else 1.
    """
    if (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (3, 3)
            and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1)):
        return WINOGRAD_FACTOR
    return Fraction(1)


@dataclass
class LayerCount:
    """One conv or FC layer's multiply-adds."""

    name: str
    kind: str
    macs: int
    wino_muls: float


@dataclass
class Complexity:
    """A model's complexity at one input size (counts, not billions).

    Attributes:
        params: Number of parameters.
        flops: Conv and FC multiply-adds (the paper's theoretical FLOPs).
        wino_muls: Multiplications with Winograd for stride-1 3x3 convs (the paper's Wino MULs).
        flops_all: mmengine's total, which also counts BN, pooling and upsampling.
        by_operator: mmengine's counts per operator.
        input_shape: ``(N, C, H, W)`` counted.
        layers: Per-layer counts (conv and FC modules).
    """

    params: int
    flops: int
    wino_muls: float
    flops_all: int
    by_operator: dict[str, int]
    input_shape: tuple[int, ...]
    layers: list[LayerCount] = field(default_factory=list)

    def summary(self) -> dict:
        """Params in millions and FLOPs / MULs in billions (no per-layer detail)."""
        return dict(params_m=self.params / 1e6, flops_b=self.flops / 1e9,
                    wino_muls_b=self.wino_muls / 1e9, flops_all_b=self.flops_all / 1e9,
                    input_shape=list(self.input_shape))

    def to_dict(self, layers: bool = False) -> dict:
        """Everything as plain types (for json)."""
        out = asdict(self)
        out['input_shape'] = list(self.input_shape)
        if not layers:
            out.pop('layers')
        return out


def count_complexity(model: nn.Module, inputs: torch.Tensor | tuple) -> Complexity:
    """Count params, FLOPs and Wino MULs of ``model`` on ``inputs``.

    Args:
        model: The module to count; it is called as ``model(*inputs)`` under a jit trace,
            so wrap OpenMMLab models in :class:`mmrepvgg.deploy.build.TensorForward`.
        inputs: One tensor or a tuple of inputs. Counts scale with the batch size; use 1.

    Returns:
        The counts.
    """
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs, )
    was_training = model.training
    model.eval()
    try:
        analyzer = FlopAnalyzer(model, inputs)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        by_operator = dict(analyzer.by_operator())
        per_module = analyzer.by_module_and_operator()
    finally:
        model.train(was_training)
    flops = sum(by_operator.get(op, 0) for op in MAC_OPERATORS)
    modules = dict(model.named_modules())
    layers, counted = [], 0
    wino = Fraction(0)
    for name, ops in per_module.items():
        module = modules.get(name)
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        macs = sum(ops.get(op, 0) for op in MAC_OPERATORS)
        if not macs:
            continue
        muls = macs * winograd_factor(module)
        wino += muls
        counted += macs
        layers.append(LayerCount(name, type(module).__name__, macs, float(muls)))
    # multiply-adds outside conv/linear modules (functional calls) count at full cost
    wino += flops - counted
    return Complexity(params=parameter_count(model)[''], flops=flops, wino_muls=float(wino),
                      flops_all=sum(by_operator.values()), by_operator=by_operator,
                      input_shape=tuple(inputs[0].shape), layers=layers)


# ----------------------------------------------------------------------------- model level


def model_complexity(spec: str, shape: tuple[int, int] | None = None, num_classes: int = 1000,
                     cfg_options: dict | None = None) -> dict:
    """Counts for the deployed and the training-time form of one model.

    The *deployed* form of a RepVGG model has its blocks folded (:func:`mmrepvgg.reparameterize`);
    that of a baseline has its conv-BN pairs folded (as the paper does for its baselines),
    which changes params (BN affine weights go, conv biases come) but not FLOPs.

    Args:
        spec: Arch name, baseline name or config path (see
            :func:`~projects.benchmark.models.build_from_spec`).
        shape: ``(H, W)``; default: the size a config is tested at, else 224x224
            (classification) or 713x713 (segmentation).
        num_classes: Classes of a classifier built from a name.
        cfg_options: Overrides for a config.

    Returns:
        ``dict(name, task, family, input_shape, deploy=Complexity.summary(),
        train=Complexity.summary())``.
    """
    built = build_from_spec(spec, num_classes=num_classes, cfg_options=cfg_options)
    shape = tuple(shape or built.input_shape or default_input_shape(built.task))
    x = example_input(shape)
    wrapped = TensorForward(built.model).eval()
    train = count_complexity(wrapped, x)
    if built.family == 'repvgg':
        reparameterize(wrapped)
    else:
        fuse_conv_bn_pairs(wrapped, x)
    deploy = count_complexity(wrapped, x)
    return dict(name=built.name, task=built.task, family=built.family, input_shape=list(shape),
                deploy=deploy.summary(), train=train.summary())


def table4_specs(paper: Mapping[str, PaperModel]) -> list[str]:
    """The classifiers of the paper's Tables 4 and 5 this project builds, in table order.

    RepVGG rows come from the metafile's ``Arch`` fields (every RepVGG of Tables 4 and 5),
    baselines from its ``Baseline`` fields (the ResNets, ResNeXts and VGG-16 mmpretrain has).

    Args:
        paper: The loaded metafile (:func:`~projects.benchmark.metafile.load_metafile`).
    """
    return [m.spec for m in paper.values() if m.task == 'cls' and m.spec]


def complexity_markdown(rows: list[dict], paper: Mapping[str, PaperModel] | None = None) -> str:
    """A markdown table of :func:`model_complexity` rows, next to the paper's numbers.

    Args:
        rows: Results of :func:`model_complexity`.
        paper: The loaded metafile: adds the paper's Params / FLOPs / Wino MULs; None: left
            out.

    Returns:
        The table (deployed model first, then the training-time model).
    """
    with_paper = paper is not None
    head = ['Model', 'Params (M)', 'FLOPs (B)', 'Wino MULs (B)']
    if with_paper:
        head += ['Paper Params', 'Paper FLOPs', 'Paper Wino MULs']
    head += ['Train-time Params (M)', 'Train-time FLOPs (B)', 'Train-time Wino MULs (B)']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        d, t = r['deploy'], r['train']
        cells = [r['name'], fmt(d['params_m'], '.2f'), fmt(d['flops_b'], '.2f'),
                 fmt(d['wino_muls_b'], '.2f')]
        if with_paper:
            p = find_paper_model(r['name'], paper)
            pp = p.paper if p else {}
            cells += [fmt(pp.get('Params (M)'), '.2f'), fmt(pp.get('Theo FLOPs (B)'), '.1f'),
                      fmt(pp.get('Wino MULs (B)'), '.1f')]
        cells += [fmt(t['params_m'], '.2f'), fmt(t['flops_b'], '.2f'), fmt(t['wino_muls_b'], '.2f')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)

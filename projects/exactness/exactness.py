"""How exact is re-parameterization? Fold errors per arch, dilation plan and block type;
how far fp16/bf16 drift from fp32.

``tools/check_exactness.py`` prints these for every variant (:func:`fold_error_table` and
:func:`fold_errors_markdown`; with ``--dtype``, :func:`precision_report` and
:func:`precision_markdown`); the figures in the README come from it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmrepvgg.deploy.build import TensorForward, input_shape_from_config, load_model
from mmrepvgg.deploy.onnx_eval import build_dataset, make_loader
from mmrepvgg.deploy.verify import compare_outputs
from mmrepvgg.models import RepVGG, reparameterize
from mmrepvgg.models.arch import ARCH_ZOO, ArchLike, PlanLike
from projects.benchmark.device import DTYPES, backend_supported, resolve_device


def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial running statistics and affine parameters, in place.

    The default init (mean 0, var 1, gamma 1, beta 0) would hide fusion bugs.

    Args:
        model: Any module.
        seed: Seed of the random values.

    Returns:
        The same module.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.25)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) * 1.5 + 0.25)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.5)
    return model


@dataclass
class FoldErrors:
    """Max |deployed - training-time| relative to each output's largest magnitude.

    Args:
        fp64: Both models in float64: the error of the algebra.
        fp32_reference: float32 on PyTorch's reference conv backend (oneDNN off).
        fp32_default: float32 on the default backend (oneDNN on a CPU).
    """

    fp64: float
    fp32_reference: float
    fp32_default: float


def _max_rel(reference, outputs) -> float:
    return max(compare_outputs([r], [o])[1] for r, o in zip(reference, outputs))


def fold_errors(arch: ArchLike, plan: PlanLike = None, shape: tuple[int, int] = (40, 48),
                seed: int = 0, block: str = 'RepVGGBlock') -> FoldErrors:
    """Fold a RepVGG backbone with randomized BNs and measure the output differences.

    Args:
        arch: Arch name or spec.
        plan: Dilation plan.
        shape: Input height and width (batch 2).
        seed: Seed of the weights, BN values and input.
        block: Block type (``'RepVGGBlock'`` or ``'QARepVGGBlock'``).

    Returns:
        The relative errors of all four stage outputs, worst stage.
    """
    torch.manual_seed(seed)
    model = RepVGG(arch, out_indices=(0, 1, 2, 3), dilation_plan=plan,
                   block_cfg=dict(type=block))
    model = randomize_bn_(model, seed + 1)
    model.eval()
    x = torch.randn(2, 3, *shape)
    with torch.no_grad():
        model64 = copy.deepcopy(model).double()
        expected64 = model64(x.double())
        fp64 = _max_rel(expected64, reparameterize(model64)(x.double()))
        with torch.backends.mkldnn.flags(enabled=False):
            expected_ref = model(x)
        expected = model(x)
        reparameterize(model)
        with torch.backends.mkldnn.flags(enabled=False):
            ref = _max_rel(expected_ref, model(x))
        default = _max_rel(expected, model(x))
    return FoldErrors(fp64, ref, default)


#: Dilation plans of the fold-error table (``'none'``: no dilation).
PLANS = ('none', 'full', 'fast')


def block_archs(block: str = 'RepVGGBlock') -> list[str]:
    """The zoo archs a block type takes: all 14 for RepVGGBlock, all but the SE arch (D2se)
    for QARepVGGBlock."""
    return [a for a, spec in ARCH_ZOO.items() if block == 'RepVGGBlock' or not spec.use_se]


def fold_error_table(archs: Sequence[str] | None = None, plans: Sequence[str] = PLANS,
                     shape: tuple[int, int] = (40, 48), seed: int = 0,
                     block: str = 'RepVGGBlock',
                     progress: bool = True) -> list[tuple[str, str, FoldErrors]]:
    """:func:`fold_errors` of every arch and dilation plan.

    Args:
        archs: Arch names (default: :func:`block_archs` of ``block``).
        plans: Dilation plans among :data:`PLANS`.
        shape: Input height and width.
        seed: Seed of the weights, BN values and input.
        block: Block type.
        progress: Show a progress bar (on stdout).

    Returns:
        ``[(arch, plan, errors)]`` in the order arch, then plan.
    """
    from mmengine.utils import ProgressBar
    cases = [(a, p) for a in (archs or block_archs(block)) for p in plans]
    rows, bar = [], ProgressBar(len(cases)) if progress else None
    for arch, plan in cases:
        rows.append((arch, plan, fold_errors(arch, None if plan == 'none' else plan, shape,
                                             seed, block)))
        if bar:
            bar.update()
    return rows


def fold_errors_markdown(rows: Sequence[tuple[str, str, FoldErrors]],
                         block: str = 'RepVGGBlock') -> str:
    """The fold errors as a markdown table under the block type, with the worst row.

    Args:
        rows: :func:`fold_error_table`.
        block: The block type they were measured with (the heading).
    """
    lines = [block, '', '| arch | plan | fp64 | fp32 reference backend | fp32 default backend |',
             '|---|---|---|---|---|']
    for arch, plan, e in rows:
        lines.append(f'| {arch} | {plan} | {e.fp64:.1e} | {e.fp32_reference:.1e} | '
                     f'{e.fp32_default:.1e} |')
    if rows:
        worst = [max(getattr(e, f) for *_, e in rows)
                 for f in ('fp64', 'fp32_reference', 'fp32_default')]
        lines.append(f'| **worst** | | {worst[0]:.1e} | {worst[1]:.1e} | {worst[2]:.1e} |')
    return '\n'.join(lines)


def estimate_bn_stats_(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BN's running statistics to those of ``x``'s activations, then eval mode.

    With random weights and made-up BN statistics the activations of a deep plain network
    grow block by block (with :func:`randomize_bn_`, to 1e5 on RepVGG-B0: fp16 overflows);
    a trained network's BNs keep them near unit scale. Estimating the running statistics
    on an input (cumulative average, affine parameters kept) gives random weights that
    scale.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    return model.eval()


#: Reduced precisions :func:`precision_errors` measures: those of
#: :data:`~projects.benchmark.device.DTYPES` whose tensors are not float32.
PRECISIONS = {name: dtype for name, dtype in DTYPES.items() if dtype != torch.float32}


@dataclass
class PrecisionErrors:
    """A reduced precision's output error, relative to the same model in fp32.

    ``*_max``: max |low - fp32| / max |fp32| (as the fold errors); ``*_l2``:
    ||low - fp32|| / ||fp32|| over the whole output. ``inf``: the output overflowed.

    Args:
        arch: Arch name.
        dtype: ``'fp16'`` or ``'bf16'``.
        device: Where it ran.
        deploy_max: The folded (deployed) backbone, max relative error.
        deploy_l2: The folded backbone, relative L2 error.
        train_max: The training-time (multi-branch) backbone, max relative error.
        skipped: Why it did not run ('' if it ran).
    """

    arch: str
    dtype: str
    device: str
    deploy_max: float = float('nan')
    deploy_l2: float = float('nan')
    train_max: float = float('nan')
    skipped: str = ''


def _rel_l2(ref: torch.Tensor, out: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


def _precision_rows(name: str, nets: dict, x: torch.Tensor, dtypes: tuple[str, ...],
                    device: str, forward) -> list[PrecisionErrors]:
    """Compare ``forward(net, x)`` in each dtype with fp32 for the ``train`` and ``deploy`` nets."""
    out = []
    with torch.no_grad():
        refs = {key: forward(net, x).float() for key, net in nets.items()}
        for dtype in dtypes:
            ok, reason = backend_supported(dtype, device)
            if not ok:
                out.append(PrecisionErrors(name, dtype, str(device), skipped=reason))
                continue
            errs: dict[str, tuple[float, float]] = {}
            for key, net in nets.items():
                low = forward(copy.deepcopy(net).to(PRECISIONS[dtype]),
                              x.to(PRECISIONS[dtype])).float()
                errs[key] = ((_max_rel([refs[key]], [low]), _rel_l2(refs[key], low))
                             if torch.isfinite(low).all() else (float('inf'), ) * 2)
            nan = (float('nan'), ) * 2
            out.append(PrecisionErrors(name, dtype, str(device), *errs['deploy'],
                                       errs.get('train', nan)[0]))
    return out


def precision_errors(arch: ArchLike, dtypes: tuple[str, ...] = ('fp16', 'bf16'),
                     shape: tuple[int, int] = (224, 224), batch: int = 1, seed: int = 0,
                     device: str = 'cpu') -> list[PrecisionErrors]:
    """Run a random RepVGG backbone in fp16/bf16 and compare with itself in fp32.

    The backbone as initialized (kaiming weights, BN affine 1/0) with its BN statistics
    estimated on a random input (:func:`estimate_bn_stats_`), so activations have a
    trained network's scale; its last stage's output is compared. The folded model and
    the training-time one are each compared with themselves in fp32 on the same device,
    so the numbers are the cost of the precision, not of the folding. A random network is
    no trained one: :func:`checkpoint_precision_errors` measures a trained model.

    Args:
        arch: Arch name or spec.
        dtypes: Reduced precisions to measure.
        shape: Input height and width.
        batch: Batch size.
        seed: Seed of the weights and inputs.
        device: ``'cpu'`` or ``'cuda'``.

    Returns:
        One :class:`PrecisionErrors` per dtype (``skipped`` says why one did not run).

    Raises:
        ValueError: The device is not there
            (:func:`~mmrepvgg.utils.device.resolve_device`).
    """
    resolve_device(device)
    torch.manual_seed(seed)
    model = RepVGG(arch, out_indices=(3, )).to(device)
    estimate_bn_stats_(model, torch.randn(8, 3, *shape).to(device))
    nets = {'train': model, 'deploy': reparameterize(copy.deepcopy(model))}
    x = torch.randn(batch, 3, *shape).to(device)
    return _precision_rows(model.arch_name, nets, x, dtypes, device,
                           lambda net, inp: net(inp)[-1])


def checkpoint_precision_errors(config: str, checkpoint: str,
                                dtypes: tuple[str, ...] = ('fp16', 'bf16'),
                                shape: tuple[int, int] | None = None, batch: int = 8,
                                seed: int = 0, device: str = 'cpu') -> tuple[list, str]:
    """:func:`precision_errors` for a trained checkpoint: its logits in fp16/bf16 vs fp32.

    The inputs are the first ``batch`` test images through the config's pipeline and data
    preprocessor when the dataset is there, else random normal inputs of the config's
    test crop (or ``shape``).

    Args:
        config: The config file.
        checkpoint: Training-time (or deployed: no training-time column) checkpoint.
        dtypes: Reduced precisions.
        shape: Input size for random inputs.
        batch: Images.
        seed: Seed of random inputs.
        device: ``'cpu'`` or ``'cuda'``.

    Returns:
        ``(rows, inputs)``: the rows and a description of the inputs.

    Raises:
        ValueError: The device is not there (checked before the checkpoint is loaded).
    """
    resolve_device(device)
    from mmengine.config import Config

    cfg = Config.fromfile(config)
    model, deployed, _ = load_model(cfg, checkpoint)
    try:
        dataset = build_dataset(cfg, 'test')
        data = next(iter(make_loader(cfg, dataset, 'test', range(min(batch, len(dataset))),
                                     batch_size=batch)))
        x = model.data_preprocessor(data, False)['inputs']
        inputs = f'{len(x)} test images'
    except Exception:  # no data here: random inputs of the right size
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, 3, *(shape or input_shape_from_config(cfg)), generator=gen)
        inputs = f'{batch} random normal inputs'
    model = model.to(device)
    nets = {'deploy': model} if deployed else {
        'train': model, 'deploy': reparameterize(copy.deepcopy(model))}
    name = f'{Path(config).stem} ({Path(checkpoint).name})'
    rows = _precision_rows(name, nets, x.to(device), dtypes, device,
                           lambda net, inp: TensorForward(net)(inp))
    return rows, f'logits on {inputs} of {tuple(x.shape[2:])}'


#: Archs :func:`precision_report` measures when neither archs nor a checkpoint are given.
PRECISION_ARCHS = ('A0', 'B0', 'B2')


def precision_report(dtypes: Sequence[str] = ('fp16', 'bf16'),
                     archs: Sequence[str] | None = None,
                     shape: tuple[int, int] | None = None, batch: int | None = None,
                     seed: int = 0, device: str = 'cpu',
                     checkpoint: tuple[str, str] | None = None,
                     progress: bool = True) -> tuple[list[PrecisionErrors], list[str]]:
    """The precision rows of a trained checkpoint and of random archs, with what each is.

    Args:
        dtypes: Reduced precisions (keys of :data:`PRECISIONS`).
        archs: Random-weight archs (:func:`precision_errors`); default
            :data:`PRECISION_ARCHS` when no checkpoint is given, none when one is.
        shape: Input size (default: 224x224 for archs, the config's test crop for random
            checkpoint inputs).
        batch: Inputs per model (default: 1 for archs, 8 images for a checkpoint).
        seed: Seed of the weights and inputs.
        device: ``'cpu'`` or ``'cuda'`` (checked before anything is built).
        checkpoint: ``(config, checkpoint)`` of a trained model
            (:func:`checkpoint_precision_errors`).
        progress: Show a progress bar over the archs (on stdout).

    Returns:
        ``(rows, notes)``: the rows, the checkpoint's first, and one note per source of rows
        saying what was measured on what input.
    """
    from mmengine.utils import ProgressBar
    resolve_device(device)
    rows: list[PrecisionErrors] = []
    notes = []
    if checkpoint:
        config, ckpt = checkpoint
        found, inputs = checkpoint_precision_errors(config, ckpt, tuple(dtypes), shape,
                                                    batch or 8, seed, device)
        rows += found
        notes.append(f'{Path(config).stem}: trained weights, {inputs}')
    if archs or not checkpoint:
        archs = list(archs or PRECISION_ARCHS)
        shape, batch = tuple(shape or (224, 224)), batch or 1
        bar = ProgressBar(len(archs)) if progress else None
        for arch in archs:
            rows += precision_errors(arch, tuple(dtypes), shape, batch, seed, device)
            if bar:
                bar.update()
        notes.append(f'{", ".join(archs)}: backbone output, random weights with BN statistics '
                     f'estimated on a random input, input {batch}x3x{shape[0]}x{shape[1]}')
    return rows, notes


def precision_markdown(rows: Sequence[PrecisionErrors], notes: Sequence[str],
                       device: str = 'cpu') -> str:
    """The precision rows as a markdown table under a line saying what they measure.

    Args:
        rows: :func:`precision_report` rows (a skipped one says why).
        notes: :func:`precision_report` notes.
        device: Where they ran.
    """
    lines = [f'Output in fp16/bf16 vs the same model in fp32 on {device} ('
             + '; '.join(notes) + '):', '',
             '| model | dtype | deployed: max rel | deployed: rel L2 | training-time: max rel |',
             '|---|---|---|---|---|']
    for r in rows:
        if r.skipped:
            lines.append(f'| {r.arch} | {r.dtype} | not run: {r.skipped} | | |')
        else:
            lines.append(f'| {r.arch} | {r.dtype} | {r.deploy_max:.1e} | {r.deploy_l2:.1e} | '
                         f'{r.train_max:.1e} |')
    return '\n'.join(lines)

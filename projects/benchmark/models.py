"""Build the models the benchmark and complexity tools measure: RepVGG classifiers, baselines,
configs.

A *model spec* is one of

- a RepVGG arch name from :data:`~mmrepvgg.models.arch.ARCH_ZOO` (``'A0'``, ``'RepVGG-B2'``):
  an mmpretrain ``ImageClassifier`` with the RepVGG backbone, global pooling and a linear head;
- ``'QARepVGG-'`` + an arch name (``'QARepVGG-A0'``): the same with QARepVGG blocks
  (``block_cfg=dict(type='QARepVGGBlock')``; every arch but D2se);
- a baseline name from :data:`BASELINES` (``'ResNet-50'``, ``'VGG-16'``, ``'ResNeXt-50'``):
  the same classifier with mmpretrain's backbone;
- a path to an mmengine config (``configs/pspnet_repvgg-b2_cityscapes.py``): its ``model``
  is built in the config's ``default_scope`` (``mmseg`` for segmentors, ``mmpretrain`` for
  classifiers).

Every model is returned in eval mode, with SyncBN reverted to BN (the tools run on one device).
"""
from __future__ import annotations

import os.path as osp
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm

from mmrepvgg.deploy.build import build_model, build_model_cfg, input_shape_from_config
from mmrepvgg.models import RepBlockBase, reparameterize
from mmrepvgg.models.arch import ARCH_ZOO, arch_name, get_arch
from mmrepvgg.utils.config import config_files, merge_options, scope_of

#: Baseline classifiers (paper Table 4) buildable from mmpretrain: name -> (backbone cfg,
#: width of the last stage). ``VGG-16`` is built with BN (as the paper trains its baselines
#: "with the same training settings"); with its conv-BN pairs fused it has exactly the
#: parameters of the BN-free VGG-16 (138,357,544: the paper's "138.35"). The ``-caffe``
#: ResNets put the stride in the first 1x1 conv of a bottleneck (ResNet v1), which is the
#: variant whose FLOPs match the paper's ResNet-50/101/152 rows; mmpretrain's default
#: (``pytorch`` style) strides the 3x3 conv.
BASELINES: dict[str, tuple[dict, int | None]] = {
    'ResNet-18': (dict(type='ResNet', depth=18), 512),
    'ResNet-34': (dict(type='ResNet', depth=34), 512),
    'ResNet-50': (dict(type='ResNet', depth=50), 2048),
    'ResNet-101': (dict(type='ResNet', depth=101), 2048),
    'ResNet-152': (dict(type='ResNet', depth=152), 2048),
    'ResNet-50-caffe': (dict(type='ResNet', depth=50, style='caffe'), 2048),
    'ResNet-101-caffe': (dict(type='ResNet', depth=101, style='caffe'), 2048),
    'ResNet-152-caffe': (dict(type='ResNet', depth=152, style='caffe'), 2048),
    'ResNeXt-50': (dict(type='ResNeXt', depth=50, groups=32, width_per_group=4), 2048),
    'ResNeXt-101': (dict(type='ResNeXt', depth=101, groups=32, width_per_group=4), 2048),
    'VGG-16': (dict(type='VGG', depth=16, norm_cfg=dict(type='BN'), num_classes=1000), None),
}


@dataclass
class BuiltModel:
    """A model ready to measure.

    Attributes:
        name: Display name (``'RepVGG-A0'``, ``'ResNet-50'``, the config's file stem).
        model: The model, in eval mode.
        task: ``'cls'`` or ``'seg'``.
        family: ``'repvgg'`` if it holds RepVGG blocks, else ``'baseline'``.
        input_shape: ``(H, W)`` a config's model is tested at (:func:`config_test_shape`);
            None for a model built from a name.
    """

    name: str
    model: nn.Module
    task: str
    family: str
    input_shape: tuple[int, int] | None = None


def classifier_cfg(backbone: dict, in_channels: int | None, num_classes: int) -> dict:
    if in_channels is None:  # VGG has its own classifier
        backbone = dict(backbone, num_classes=num_classes)
        return dict(type='ImageClassifier', backbone=backbone)
    return dict(type='ImageClassifier', backbone=backbone, neck=dict(type='GlobalAveragePooling'),
                head=dict(type='LinearClsHead', num_classes=num_classes, in_channels=in_channels))


def _has_repvgg(model: nn.Module) -> bool:
    return any(isinstance(m, RepBlockBase) for m in model.modules())


#: ``QARepVGG-<arch>``: a RepVGG classifier built with QARepVGG blocks.
_QA_PREFIX = re.compile(r'^qa[-_]?repvgg[-_]?', re.IGNORECASE)


def spec_files(specs: Sequence[str]) -> list[str]:
    """The files of the config specs, their ``_base_`` chains included
    (:func:`mmrepvgg.utils.config.config_files`): inputs of the benchmark and complexity
    tools, which their outputs may never be."""
    files: list[str] = []
    for spec in specs:
        if spec.endswith('.py') or osp.isfile(spec):  # a config, as resolve_name says
            files += [f for f in config_files(spec) if f not in files]
    return files


def resolve_name(spec: str) -> tuple[str, str]:
    """Classify a model spec.

    Args:
        spec: An arch name, a baseline name or a config path.

    Returns:
        ``(kind, canonical_name)`` with kind ``'repvgg'``, ``'qarepvgg'`` (canonical name: the
        arch), ``'baseline'`` or ``'config'``.

    Raises:
        KeyError: If ``spec`` is none of these.
    """
    if spec.endswith('.py') or osp.isfile(spec):
        return 'config', spec
    if _QA_PREFIX.match(spec):
        archs = [k for k, v in ARCH_ZOO.items() if not v.use_se]
        try:
            arch = arch_name(_QA_PREFIX.sub('', spec))
        except KeyError:
            arch = None
        if arch not in archs:
            raise KeyError(f'Unknown model {spec!r}: QARepVGG takes a RepVGG arch without SE '
                           f'({", ".join(archs)})')
        return 'qarepvgg', arch
    lower = {k.lower(): k for k in BASELINES}
    if spec.lower() in lower:
        return 'baseline', lower[spec.lower()]
    try:
        return 'repvgg', arch_name(spec)
    except KeyError:
        raise KeyError(f'Unknown model {spec!r}: give a RepVGG arch ({", ".join(ARCH_ZOO)}), '
                       f'a baseline ({", ".join(BASELINES)}) or a config path') from None


def validate_specs(specs: Sequence[str]) -> None:
    """Check model specs (arch, baseline or config) before anything is built.

    Args:
        specs: Model specs (see the module docstring).

    Raises:
        KeyError: An unknown arch or baseline.
        FileNotFoundError: A config path that does not exist.
    """
    for spec in specs:
        kind, name = resolve_name(spec)
        if kind == 'config' and not osp.isfile(name):
            raise FileNotFoundError(f'Config not found: {name}')


def build_from_spec(spec: str, num_classes: int = 1000, deploy: bool = False,
                cfg_options: dict | None = None) -> BuiltModel:
    """Build a model to measure, in eval mode.

    Args:
        spec: A RepVGG arch name, a baseline name (:data:`BASELINES`) or a config path.
        num_classes: Classes of the classifier head (arch and baseline names only).
        deploy: Fold the RepVGG blocks (arch names build them folded; a config's model is
            folded with :func:`mmrepvgg.reparameterize`). Baselines are not changed: see
            :func:`projects.benchmark.fuse_conv_bn_pairs`.
        cfg_options: Overrides merged into a config (``Config.merge_from_dict``).

    Returns:
        The built model with its name, task and family.
    """
    kind, name = resolve_name(spec)
    if kind in ('repvgg', 'qarepvgg'):
        width = get_arch(name).stage_channels[-1]
        block = 'QARepVGGBlock' if kind == 'qarepvgg' else 'RepVGGBlock'
        cfg = classifier_cfg(dict(type='mmrepvgg.RepVGG', arch=name, deploy=deploy,
                                   block_cfg=dict(type=block)), width, num_classes)
        display = f'{"QARepVGG" if kind == "qarepvgg" else "RepVGG"}-{name}'
        return BuiltModel(display, build_model_cfg(cfg, 'mmpretrain').eval(), 'cls', 'repvgg')
    if kind == 'baseline':
        backbone, width = BASELINES[name]
        model = build_model_cfg(classifier_cfg(backbone, width, num_classes), 'mmpretrain')
        return BuiltModel(name, model.eval(), 'cls', 'baseline')
    cfg = merge_options(Config.fromfile(name), cfg_options)
    scope = scope_of(cfg)
    # measuring random weights: never download or load a checkpoint (build_model drops
    # init_cfg); one device: SyncBN as BN
    model = revert_sync_batchnorm(build_model(cfg))
    if deploy:
        reparameterize(model)
    task = 'seg' if scope == 'mmseg' else 'cls'
    family = 'repvgg' if _has_repvgg(model) else 'baseline'
    return BuiltModel(osp.splitext(osp.basename(name))[0], model, task, family,
                      config_test_shape(cfg))


def config_test_shape(cfg: Config) -> tuple[int, int]:
    """The input size ``(H, W)`` a config's model is run at in testing.

    A segmentor with slide inference runs on crops of ``model.test_cfg.crop_size`` (mmseg:
    ``(h, w)``), one with whole inference on the image after the test pipeline's last
    ``Resize`` (``scale`` is ``(w, h)``); anything else is what the deploy tools export at
    (:func:`mmrepvgg.deploy.build.input_shape_from_config`: the test crop, 224 if nothing
    says).

    Args:
        cfg: The loaded config.
    """
    test_cfg = (cfg.get('model') or {}).get('test_cfg') or {}
    if test_cfg.get('mode') == 'slide' and test_cfg.get('crop_size'):
        height, width = test_cfg['crop_size']
        return int(height), int(width)
    if test_cfg.get('mode') == 'whole':
        dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
        pipeline = dataset.get('pipeline') or cfg.get('test_pipeline') or []
        scales = [step['scale'] for step in pipeline
                  if step.get('type') == 'Resize' and step.get('scale')]
        if scales:
            width, height = scales[-1]
            return int(height), int(width)
    return input_shape_from_config(cfg)


def default_input_shape(task: str) -> tuple[int, int]:
    """The paper's input size: 224x224 for classification, 713x713 for segmentation."""
    return (713, 713) if task == 'seg' else (224, 224)


def example_input(shape: tuple[int, int], batch: int = 1, device: str | torch.device = 'cpu',
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """A random image batch of shape ``(batch, 3, H, W)``."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, *shape, generator=gen).to(device=device, dtype=dtype)

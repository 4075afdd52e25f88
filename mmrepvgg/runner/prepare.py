"""Config preparation shared by ``tools/train.py``, ``tools/test.py`` and the demos.

The functions here turn command-line choices into a ready mmengine :class:`Config`:
work dir, AMP, resume, the deploy hook and prediction images, and the adaptations that a
machine needs (no GPU; SyncBN on one process; a missing pretrained file).
"""
from __future__ import annotations

import logging
import os
import os.path as osp
from typing import Any, Iterator, Mapping

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from ..utils.config import SYNC_BN_TYPES, load_config, replace_sync_bn, scope_of, walk_dicts
from ..utils.errors import ConfigError, DataNotFoundError, PretrainedNotFoundError


def use_cuda() -> bool:
    """Whether mmengine will run on a GPU (``CUDA_VISIBLE_DEVICES=-1`` forces the CPU)."""
    return torch.cuda.is_available()


def adapt_to_machine(cfg: Config) -> Config:
    """Make a config run where it is launched, logging every change.

    - One process (``launcher='none'``): SyncBN needs no change. mmengine's runner turns
      every SyncBN layer into a plain BN layer before training or testing (its
      ``wrap_model``), so a SyncBN config trains on one GPU or the CPU as it is.
    - Several processes on CPUs (``torchrun`` without a GPU): SyncBN only runs on GPUs, so
      the model config gets plain BN (statistics per process); the process group uses
      ``gloo`` instead of ``nccl`` and DDP gets no ``device_ids``.

    Args:
        cfg: The config (changed in place).

    Returns:
        The config.
    """
    distributed = cfg.get('launcher', 'none') != 'none'
    if not distributed:
        if any(d.get('type') in SYNC_BN_TYPES for d in walk_dicts(cfg.get('model', {}))):
            print_log('Single process: SyncBN layers will run as BN (mmengine reverts them '
                      'when the model is not distributed)', logger='current')
        return cfg
    if use_cuda():
        return cfg
    n = replace_sync_bn(cfg.model)
    env = cfg.setdefault('env_cfg', {})
    dist_cfg = env.setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        dist_cfg['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel',
                                                    broadcast_buffers=False)
    wrapper['device_ids'] = None  # CPU modules take no device ids
    cfg.model_wrapper_cfg = wrapper
    print_log('Distributed on CPU: gloo backend, DDP without device ids'
              + (f', {n} SyncBN configs replaced by BN (SyncBN needs GPUs)' if n else ''),
              logger='current', level=logging.WARNING)
    return cfg






def _datasets(dataset: Any) -> Iterator[dict]:
    """A dataloader's dataset config and the ones it wraps (RepeatDataset, ConcatDataset)."""
    if not isinstance(dataset, Mapping):
        return
    yield dataset
    yield from _datasets(dataset.get('dataset'))
    for sub in dataset.get('datasets') or []:
        yield from _datasets(sub)


def check_data(cfg: Config, loaders: tuple[str, ...] = ('train', 'val', 'test')) -> None:
    """Fail early, with instructions, if a dataset folder of the config does not exist.

    Checks each ``<loader>_dataloader.dataset``'s ``data_root`` and, below it, the image
    folder of ``data_prefix`` (``img_path`` / ``img``), for the loaders the run uses.

    Args:
        cfg: The config.
        loaders: Which dataloaders: ``'train'``, ``'val'``, ``'test'``.

    Raises:
        DataNotFoundError: Naming the folder, the config key and how to fix it.
    """
    for loader in loaders:
        loader_cfg = cfg.get(f'{loader}_dataloader')
        if not isinstance(loader_cfg, Mapping):
            continue
        for dataset in _datasets(loader_cfg.get('dataset')):
            root = dataset.get('data_root')
            if not isinstance(root, str) or '://' in root:
                continue
            prefix = dataset.get('data_prefix') or {}
            sub = prefix.get('img_path') or prefix.get('img') if isinstance(
                prefix, Mapping) else prefix
            folder = root if not osp.isdir(root) or not isinstance(sub, str) or \
                osp.isabs(sub) else osp.join(root, sub)
            if not osp.isdir(folder):
                raise DataNotFoundError(
                    f'Dataset folder not found: {folder} ({loader}_dataloader.dataset, '
                    f'data_root={root!r}). Cityscapes: unzip gtFine_trainvaltest.zip and '
                    'leftImg8bit_trainvaltest.zip there and run tools/prepare_cityscapes.py; '
                    'ImageNet: mmpretrain\'s layout (docs/training.md, "Data"). Or point the '
                    f'config at your copy: --cfg-options {loader}_dataloader.dataset.data_root=DIR')


def pretrained_files(model_cfg: Any) -> list[str]:
    """Local files that ``init_cfg=dict(type='Pretrained', ...)`` entries will load."""
    files = []
    for d in walk_dicts(model_cfg):
        init = d.get('init_cfg')
        for item in init if isinstance(init, (list, tuple)) else [init]:
            if isinstance(item, dict) and item.get('type') == 'Pretrained':
                path = str(item.get('checkpoint', ''))
                if '://' not in path:
                    files.append(path)
    return files


def check_pretrained(cfg: Config) -> None:
    """Fail early, with instructions, if a pretrained file of the model is missing.

    Args:
        cfg: The config.

    Raises:
        PretrainedNotFoundError: Naming every missing file and what to do.
    """
    missing = [f for f in pretrained_files(cfg.get('model', {})) if not osp.isfile(f)]
    if missing:
        raise PretrainedNotFoundError(
            'Pretrained weights not found: ' + ', '.join(missing) + '.\n'
            '  RepVGG: convert ImageNet weights (official, mmpretrain or timm) into '
            'checkpoints/ with tools/convert_weights.py, or train one with '
            'configs/repvgg-*_in1k.py (QARepVGG: configs/qarepvgg-*_in1k.py) '
            '(docs/training.md, "Pretrained weights").\n'
            '  ResNet baselines: save open-mmlab://resnet50_v1c / resnet101_v1c as '
            'checkpoints/resnet50_v1c.pth / resnet101_v1c.pth.\n'
            '  Or pass the path with --cfg-options model.backbone.init_cfg.checkpoint=PATH, or '
            'train from scratch with --cfg-options model.backbone.init_cfg=None.')


def prepare_train_config(config: str | Config,
                         work_dir: str | None = None,
                         resume: bool | str = False,
                         amp: bool = False,
                         cfg_options: Mapping | None = None,
                         launcher: str = 'none') -> Config:
    """The config for ``tools/train.py``.

    A ``load_from`` (from the config or ``cfg_options``) is loaded strictly, and a deployed
    checkpoint there is refused (:class:`~mmrepvgg.engine.StrictLoadHook`); resuming is
    mmengine's.

    Args:
        config: Config file.
        work_dir: Output folder.
        resume: True: resume from the latest checkpoint in the work dir; a path: from it.
        amp: Automatic mixed precision (the paper trains in fp32: off by default).
        cfg_options: ``--cfg-options`` overrides.
        launcher: Job launcher.

    Returns:
        The config.
    """
    cfg = load_config(config, cfg_options, work_dir, launcher)
    if amp:
        wrapper = cfg.optim_wrapper
        if wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print_log('AMP is already enabled in the config', logger='current',
                      level=logging.WARNING)
        elif wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
            raise ConfigError(f'--amp needs optim_wrapper type OptimWrapper, got {wrapper.type}')
        else:
            wrapper.type = 'AmpOptimWrapper'
            wrapper.loss_scale = 'dynamic'
    if isinstance(resume, str):
        cfg.resume, cfg.load_from = True, resume
    else:
        cfg.resume = bool(resume)
    if cfg.get('load_from'):  # strict load_from; resuming is left to mmengine
        add_strict_load_hook(cfg, deployed='error')
    return adapt_to_machine(cfg)


def add_deploy_hook(cfg: Config) -> Config:
    """Make ``RepVGGDeployHook`` fold the model before testing.

    The hook folds after the checkpoint is loaded, so the test runs the deployed (plain)
    network. Our configs list the hook with ``fold_on_test=False`` (it writes
    ``*_deploy.pth`` after training); that entry is switched on, or one is added.
    """
    hooks = [dict(h) for h in (cfg.get('custom_hooks') or [])]
    mine = [h for h in hooks if str(h.get('type', '')).split('.')[-1] == 'RepVGGDeployHook']
    if mine:
        for hook in mine:
            hook['fold_on_test'] = True
    else:
        hooks.append(dict(type='RepVGGDeployHook', fold_on_test=True))
    cfg.custom_hooks = hooks
    return cfg


def add_strict_load_hook(cfg: Config, deployed: str) -> Config:
    """Make ``load_from`` strict with ``StrictLoadHook`` (once).

    Args:
        cfg: The config (changed in place).
        deployed: What to do with a deployed checkpoint: ``'fold'`` the model first
            (testing) or ``'error'`` (training).

    Returns:
        The config.
    """
    hooks = [dict(h) for h in (cfg.get('custom_hooks') or [])
             if str(h.get('type', '')).split('.')[-1] != 'StrictLoadHook']
    hooks.append(dict(type='mmrepvgg.StrictLoadHook', deployed=deployed))
    cfg.custom_hooks = hooks
    return cfg


def enable_prediction_images(cfg: Config, show_dir: str | None, show: bool = False,
                             wait_time: float = 2.0, interval: int = 1) -> Config:
    """Turn on the visualization hook to write prediction images.

    A relative ``show_dir`` is taken under the work dir. mmseg's ``SegVisualizationHook``
    saves through the visualizer into ``<show_dir>/vis_data/vis_image/``; mmpretrain's
    ``VisualizationHook`` into ``<show_dir>/``. The folder is logged.

    Args:
        cfg: The config (changed in place).
        show_dir: Folder for the images (None: only ``show``).
        show: Show the images in a window.
        wait_time: Seconds each shown image stays.
        interval: Draw every ``interval``-th test image (mmseg's hook defaults to 50).

    Returns:
        The config.
    """
    hooks = cfg.get('default_hooks', {})
    if 'visualization' not in hooks:
        raise RuntimeError("--show/--show-dir need default_hooks.visualization "
                           "(dict(type='SegVisualizationHook') or dict(type='VisualizationHook'))")
    vis = hooks['visualization']
    vis['interval'] = interval
    if show_dir and not osp.isabs(show_dir):
        show_dir = osp.join(cfg.work_dir, show_dir)
    if scope_of(cfg) == 'mmpretrain':
        vis['enable'] = True
        vis['show'] = show
        vis['wait_time'] = wait_time
        vis['out_dir'] = show_dir
        image_dir = show_dir
    else:
        vis['draw'] = True
        if show:
            vis['show'] = True
            vis['wait_time'] = wait_time
        if show_dir:
            cfg.visualizer['save_dir'] = show_dir
        # mmengine's Visualizer adds vis_data/, its LocalVisBackend vis_image/
        image_dir = osp.join(show_dir, 'vis_data', 'vis_image') if show_dir else None
    if image_dir:
        print_log(f'Prediction images will be written to {image_dir}', logger='current')
    return cfg


def prepare_test_config(config: str | Config,
                        checkpoint: str,
                        work_dir: str | None = None,
                        deploy: bool = False,
                        show_dir: str | None = None,
                        show: bool = False,
                        show_interval: int = 1,
                        out: str | None = None,
                        cfg_options: Mapping | None = None,
                        launcher: str = 'none') -> Config:
    """The config for ``tools/test.py``.

    The checkpoint is loaded strictly; a deployed one (``branch_reparam`` keys) gets the
    model folded before it is loaded (:class:`~mmrepvgg.engine.StrictLoadHook`).

    Args:
        config: Config file.
        checkpoint: The checkpoint to test (training-time or deployed weights).
        work_dir: Output folder for logs and metrics.
        deploy: Fold the model through ``RepVGGDeployHook`` before testing.
        show_dir: Write prediction images under this folder.
        show: Show prediction images in a window.
        show_interval: Draw every n-th test image.
        out: Segmentation: folder for the raw predictions (``IoUMetric`` output_dir);
            classification: a pickle of the results (``DumpResults``).
        cfg_options: ``--cfg-options`` overrides.
        launcher: Job launcher.

    Returns:
        The config.
    """
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'Checkpoint not found: {checkpoint}')
    cfg = load_config(config, cfg_options, work_dir, launcher)
    cfg.load_from = checkpoint
    cfg.resume = False
    add_strict_load_hook(cfg, deployed='fold')
    if deploy:
        add_deploy_hook(cfg)
    if show or show_dir:
        enable_prediction_images(cfg, show_dir, show, interval=show_interval)
    if out:
        if scope_of(cfg) == 'mmseg':
            cfg.test_evaluator['output_dir'] = out
            cfg.test_evaluator['keep_results'] = True
        else:
            evaluators = cfg.test_evaluator
            evaluators = list(evaluators) if isinstance(evaluators, (list, tuple)) else [evaluators]
            evaluators.append(dict(type='DumpResults', out_file_path=out))
            cfg.test_evaluator = evaluators
    return adapt_to_machine(cfg)


def local_rank_env(local_rank: int) -> None:
    """Set ``LOCAL_RANK`` from ``--local-rank`` if the launcher did not (OpenMMLab habit)."""
    os.environ.setdefault('LOCAL_RANK', str(local_rank))

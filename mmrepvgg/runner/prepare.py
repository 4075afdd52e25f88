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
from mmengine.device import get_device
from mmengine.logging import print_log

from ..checkpoint import check_checkpoint_path
from ..utils.config import (SYNC_BN_TYPES, config_files, load_config, replace_sync_bn, scope_of,
                            walk_dicts)
from ..utils.errors import ConfigError, SameFileError
from ..utils.fileio import check_output_path


def use_cuda() -> bool:
    """Whether mmengine will run on a GPU (``CUDA_VISIBLE_DEVICES=-1`` forces the CPU)."""
    return torch.cuda.is_available()


def adapt_to_machine(cfg: Config) -> Config:
    """Make a config (changed in place and returned) run where it is launched, logging
    every change.

    One process needs no change (mmengine's runner turns SyncBN into BN when the model is
    not distributed). Several processes on CPUs (``torchrun`` without a GPU) get plain BN
    (SyncBN needs GPUs), the ``gloo`` backend, DDP without ``device_ids`` and
    :class:`~mmrepvgg.engine.CPUDistributedHook` (one set of BN statistics).
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
    set_custom_hook(cfg, dict(type='mmrepvgg.CPUDistributedHook'))
    print_log('Distributed on CPU: gloo backend, DDP without device ids'
              + (f', {n} SyncBN configs replaced by BN (SyncBN needs GPUs)' if n else '')
              + '; BN statistics averaged over the processes after every iteration, results '
              'collected under the work dir (CPUDistributedHook)',
              logger='current', level=logging.WARNING)
    return cfg


def set_custom_hook(cfg: Config, hook: dict) -> Config:
    """Put ``hook`` into ``cfg.custom_hooks`` in place of any entry of the same type (with
    or without a scope prefix), so a hook is never registered twice."""
    name = hook['type'].split('.')[-1]
    hooks = [dict(h) for h in (cfg.get('custom_hooks') or [])
             if str(h.get('type', '')).split('.')[-1] != name]
    cfg.custom_hooks = hooks + [hook]
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

    Checks the ``data_root`` of each ``<loader>_dataloader`` dataset and, below it, the
    image folder of its ``data_prefix``.

    Raises:
        FileNotFoundError: Naming the folder, the config key and how to fix it.
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
                raise FileNotFoundError(
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
    """Fail early if a pretrained file of the model is missing (:class:`FileNotFoundError`
    naming every missing file and what to do)."""
    missing = [f for f in pretrained_files(cfg.get('model', {})) if not osp.isfile(f)]
    if missing:
        raise FileNotFoundError(
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

    ``load_from`` and ``--resume`` load strictly (:class:`~mmrepvgg.engine.StrictLoadHook`).

    Args:
        config: Config file.
        work_dir: Output folder.
        resume: True: resume from the latest checkpoint in the work dir; a path: from it.
        amp: Automatic mixed precision (mmengine's ``AmpOptimWrapper``; the paper trains in
            fp32). Needs a GPU: without one it is a :class:`ConfigError`.
        cfg_options: ``--cfg-options`` overrides.
        launcher: Job launcher.
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
    if cfg.get('optim_wrapper', {}).get('type') == 'AmpOptimWrapper' and not amp_device():
        raise ConfigError(
            f'{"--amp" if amp else "optim_wrapper AmpOptimWrapper (mixed precision)"} needs a '
            'GPU: mmengine\'s AmpOptimWrapper runs on CUDA (or NPU, MLU, MUSA) only, and '
            'none is visible; train in fp32 on the CPU (as the paper does)')
    if isinstance(resume, str):
        cfg.resume, cfg.load_from = True, resume
    else:
        cfg.resume = bool(resume)
    if cfg.get('load_from') or cfg.resume:  # strict load_from and resume
        set_custom_hook(cfg, dict(type='mmrepvgg.StrictLoadHook', deployed='error'))
    return adapt_to_machine(cfg)


def amp_device() -> bool:
    """Whether mmengine's ``AmpOptimWrapper`` can run here (a CUDA, NPU, MLU or MUSA
    device; not the CPU)."""
    return get_device() not in ('cpu', 'mps')


def add_deploy_hook(cfg: Config) -> Config:
    """Make ``RepVGGDeployHook`` fold the model after loading the checkpoint, before testing
    (our configs list it with ``fold_on_test=False``: that entry is switched on)."""
    hooks = [dict(h) for h in (cfg.get('custom_hooks') or [])]
    mine = [h for h in hooks if str(h.get('type', '')).split('.')[-1] == 'RepVGGDeployHook']
    if mine:
        for hook in mine:
            hook['fold_on_test'] = True
    else:
        hooks.append(dict(type='RepVGGDeployHook', fold_on_test=True))
    cfg.custom_hooks = hooks
    return cfg


def enable_prediction_images(cfg: Config, show_dir: str | None, show: bool = False,
                             wait_time: float = 2.0, interval: int = 1) -> Config:
    """Turn on the visualization hook to write (or show) prediction images; logs the folder.

    Args:
        cfg: The config (changed in place).
        show_dir: Folder for the images, under the work dir when relative (mmseg writes into
            its ``vis_data/vis_image/``); None: only ``show``.
        show: Show the images in a window.
        wait_time: Seconds each shown image stays.
        interval: Draw every ``interval``-th test image (mmseg's hook defaults to 50).
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
    model folded before it is loaded (:class:`~mmrepvgg.engine.StrictLoadHook`). Where
    ``out`` may be written is the caller's check (:func:`check_test_out`).

    Args:
        config: Config file.
        checkpoint: The checkpoint to test (training-time or deployed weights).
        work_dir: Output folder for logs and metrics.
        deploy: Fold the model through ``RepVGGDeployHook`` before testing.
        show_dir: Write prediction images under this folder.
        show: Show prediction images in a window.
        show_interval: Draw every n-th test image.
        out: Segmentation: folder for the label maps; classification: a pickle of the
            results. Under the work dir when relative.
        cfg_options: ``--cfg-options`` overrides.
        launcher: Job launcher.
    """
    check_checkpoint_path(checkpoint)
    cfg = load_config(config, cfg_options, work_dir, launcher)
    cfg.load_from = checkpoint
    cfg.resume = False
    set_custom_hook(cfg, dict(type='mmrepvgg.StrictLoadHook', deployed='fold'))
    if deploy:
        add_deploy_hook(cfg)
    if show or show_dir:
        enable_prediction_images(cfg, show_dir, show, interval=show_interval)
    if out:
        out = osp.join(cfg.work_dir, out)  # (an absolute out stays as it is)
        if scope_of(cfg) == 'mmseg':
            cfg.test_evaluator['output_dir'] = out
            cfg.test_evaluator['keep_results'] = True
        else:
            evaluators = cfg.test_evaluator
            evaluators = list(evaluators) if isinstance(evaluators, (list, tuple)) else [evaluators]
            evaluators.append(dict(type='DumpResults', out_file_path=out))
            cfg.test_evaluator = evaluators
    return adapt_to_machine(cfg)


def dataset_folders(cfg: Config) -> list[str]:
    """The ``data_root`` of every dataset of the train, val and test loaders."""
    folders: list[str] = []
    for loader in ('train', 'val', 'test'):
        loader_cfg = cfg.get(f'{loader}_dataloader')
        if isinstance(loader_cfg, Mapping):
            for dataset in _datasets(loader_cfg.get('dataset')):
                root = dataset.get('data_root')
                if isinstance(root, str) and root and '://' not in root and root not in folders:
                    folders.append(root)
    return folders


def _inside(path: str, folder: str) -> bool:
    path, folder = osp.realpath(path), osp.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_test_out(cfg: Config, out: str, force: bool = False) -> str:
    """Where ``tools/test.py --out`` writes, checked before anything runs.

    A relative ``out`` is taken under the work dir (as ``--show-dir``). A segmentor writes a
    folder of label maps named after the test images: it may not be (or be inside) a
    dataset folder of the config, and a folder that already holds label maps (``*.png``)
    needs ``force``. A classifier writes one pickle (``.pkl``), which may never be one of
    the test's inputs (``cfg.load_from``, the config and its ``_base_`` chain; also through
    a link) and needs ``force`` to replace a file.

    Args:
        cfg: The test config (:func:`prepare_test_config`).
        out: ``--out``.
        force: Replace existing results.

    Returns the path to write (logged). Raises :class:`SameFileError` (an input, or inside a
    dataset folder), ``FileExistsError`` (results there, no ``force``), :class:`ConfigError`
    (a classifier's ``out`` not ending in ``.pkl``), ``NotADirectoryError`` /
    ``IsADirectoryError`` (a file where a folder goes, or the other way round).
    """
    out = osp.join(cfg.work_dir, out)
    if scope_of(cfg) == 'mmseg':
        if osp.exists(out) and not osp.isdir(out):
            raise NotADirectoryError(f'--out {out} is a file; a segmentor writes a folder of '
                                     'label maps')
        for folder in dataset_folders(cfg):
            if _inside(out, folder):
                raise SameFileError(f'--out {out} is inside the dataset folder {folder}: the '
                                    'label maps would overwrite the data (--force does not '
                                    'change this); choose a folder outside it')
        if osp.isdir(out) and not force and any(p.endswith('.png') for p in os.listdir(out)):
            raise FileExistsError(f'--out {out} already holds label maps (*.png); pass '
                                  '--force to overwrite them')
        print_log(f'Label maps will be written to {out}', logger='current')
        return out
    inputs = [cfg.load_from, *(config_files(cfg.filename) if cfg.filename else [])]
    check_output_path(out, force, [i for i in inputs if i])
    if not out.endswith(('.pkl', '.pickle')):
        raise ConfigError(f'--out {out}: a classifier writes its results as a pickle; give a '
                          'file name ending in .pkl')
    print_log(f'Results will be written to {out}', logger='current')
    return out

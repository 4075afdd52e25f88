"""The one-command demos behind ``make demo`` and ``make demo-cls``.

Both run on a CPU in minutes with nothing downloaded: they make their data, train a small
config derived from the real ones with mmengine's runner and logging, test the result as
trained and folded (RepVGGDeployHook), check that both score the same, and print a summary.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from mmrepvgg.checkpoint import install_mmengine_loader
from demo.datasets import make_digits_folder, make_tiny_cityscapes, prepare_cityscapes
from mmrepvgg.runner import prepare_test_config, prepare_train_config, test, train
from mmrepvgg.utils.fileio import fresh_work_dir

REPO = Path(__file__).resolve().parents[1]
SEG_DEMO_CONFIG = 'configs/demo/pspnet_repvgg-small_tiny-cityscapes.py'
CLS_DEMO_CONFIG = 'configs/demo/repvgg-small_digits.py'


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads; ``None`` picks 1 on a busy machine, else all cores.

    On a machine whose cores are already busy, several OpenMP threads per process make
    small models many times slower (measured: ~10x on 2 shared cores), so the demos
    default to one thread there.
    """
    if threads is None:
        cores = os.cpu_count() or 1
        load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else 0.0
        threads = 1 if load >= cores - 0.5 else cores
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()



@dataclass
class DemoResult:
    """What a demo measured."""

    work_dir: str
    checkpoint: str = ''
    metric: str = ''
    trained: float = float('nan')
    deployed: float = float('nan')
    converted: float | None = None
    converted_checkpoint: str = ''
    images: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def same(self) -> bool:
        """Whether the folded model(s) scored as the trained one (to the printed 0.01)."""
        scores = [self.deployed] + ([self.converted] if self.converted is not None else [])
        return all(abs(s - self.trained) < 0.01 for s in scores)

    def summary(self) -> str:
        lines = [f'{"=" * 72}', f'Demo summary ({self.work_dir})',
                 f'  checkpoint             {self.checkpoint}',
                 f'  {self.metric} as trained    {self.trained:.2f}',
                 f'  {self.metric} deployed      {self.deployed:.2f}  (RepVGGDeployHook, '
                 'blocks folded after loading)']
        if self.converted is not None:
            lines.append(f'  {self.metric} converted     {self.converted:.2f}  '
                         f'({self.converted_checkpoint})')
        lines.append(f'  same score             {"yes" if self.same else "NO"}')
        if self.images:
            lines.append(f'  prediction images      {len(self.images)} in '
                         f'{Path(self.images[0]).parent}')
        lines.append('  time (s)               ' + ', '.join(
            f'{k} {v:.0f}' for k, v in self.seconds.items()))
        lines.append('=' * 72)
        return '\n'.join(lines)


def _latest_checkpoint(work_dir: str | Path) -> str:
    marker = Path(work_dir) / 'last_checkpoint'
    if marker.is_file():
        return marker.read_text().strip()
    ckpts = sorted(Path(work_dir).glob('*.pth'), key=lambda p: p.stat().st_mtime)
    ckpts = [p for p in ckpts if not p.name.endswith('_deploy.pth')]
    if not ckpts:
        raise FileNotFoundError(f'No checkpoint in {work_dir}')
    return str(ckpts[-1])


def _metric(metrics: Mapping, key: str) -> float:
    if key not in metrics:
        raise KeyError(f'{key} not in test metrics {sorted(metrics)}')
    return float(metrics[key])


def _test(config: str, checkpoint: str, work_dir: Path, name: str, *, deploy: bool = False,
          show_dir: str | None = None, cfg_options: Mapping | None = None) -> dict:
    cfg = prepare_test_config(config, checkpoint, work_dir=str(work_dir / name),
                              deploy=deploy, show_dir=show_dir, cfg_options=cfg_options)
    # one visualizer instance per runner in this process (mmengine keeps them by name)
    if cfg.get('visualizer'):
        cfg.visualizer.name = f'visualizer_{name}_{work_dir}'
    return test(cfg)


def _config_path(config: str) -> str:
    """A demo config: as given if it exists (from the current folder), else in the repo."""
    return config if Path(config).is_file() else str(REPO / config)


def data_root_options(data_root: str | Path) -> dict[str, str]:
    """``--cfg-options`` that point every dataloader of a demo config at ``data_root``."""
    return {f'{split}_dataloader.dataset.data_root': str(data_root)
            for split in ('train', 'val', 'test')}


def load_demo_config(config: str, data_root: str | Path) -> Config:
    """A demo config, found from any folder, with its data under ``data_root``.

    Args:
        config: A demo config, e.g. :data:`CLS_DEMO_CONFIG`: a file from the current folder
            if there is one, else the repository's.
        data_root: The demo's data (what ``make_digits_folder`` or ``make_tiny_cityscapes``
            wrote).

    Returns:
        The config.
    """
    cfg = Config.fromfile(_config_path(config))
    cfg.merge_from_dict(data_root_options(data_root))
    return cfg


def _convert(config: str, checkpoint: str, out: Path) -> str:
    """Convert with tools/deploy_convert.py (the command users run), verifying outputs.

    It runs in the repo, so every path is passed absolute: the output lands in the demo's
    work dir wherever the demo was started.
    """
    cmd = [sys.executable, str(REPO / 'tools' / 'deploy_convert.py'),
           str(Path(config).resolve()), str(Path(checkpoint).resolve()), str(out.resolve()),
           '--verify', '--force']
    print_log('Running ' + ' '.join(cmd), logger='current')
    subprocess.run(cmd, check=True, cwd=REPO)
    return str(out)


def run_seg_demo(work_dir: str | Path = 'work_dirs/demo',
                 config: str = SEG_DEMO_CONFIG,
                 max_iters: int | None = None,
                 num_train: int = 8,
                 num_val: int = 4,
                 image_size: tuple[int, int] = (128, 256),
                 convert: bool = True,
                 threads: int | None = None) -> DemoResult:
    """Tiny Cityscapes -> train PSPNet-RepVGG -> test trained and deployed -> convert.

    Args:
        work_dir: Everything goes here (the data included); it is emptied first.
        config: The demo config (derived from ``configs/pspnet_repvgg-b2_cityscapes.py``).
        max_iters: Override the config's training iterations.
        num_train: Synthetic training images.
        num_val: Synthetic validation images.
        image_size: Synthetic image ``(height, width)``.
        convert: Also convert the checkpoint with ``tools/deploy_convert.py`` and test it.
        threads: torch threads (None: see :func:`set_threads`).

    Returns:
        The measurements; ``result.same`` says whether every folded model scored the same.
    """
    config = _config_path(config)
    t0 = time.time()
    nthreads = set_threads(threads)
    work_dir = fresh_work_dir(work_dir)
    data_root = work_dir / 'tiny_cityscapes'
    result = DemoResult(work_dir=str(work_dir), metric='mIoU')
    install_mmengine_loader()
    print_log(f'[1/5] Tiny Cityscapes in {data_root} (torch threads: {nthreads})',
              logger='current')
    make_tiny_cityscapes(data_root, num_train, num_val, image_size)
    prepare_cityscapes(data_root)
    data_opts = data_root_options(data_root)
    result.seconds['data'] = time.time() - t0

    print_log(f'[2/5] Training {config}', logger='current')
    t = time.time()
    opts = dict(data_opts)
    if max_iters is not None:
        opts.update({'train_cfg.max_iters': max_iters, 'train_cfg.val_interval': max_iters,
                     'default_hooks.checkpoint.interval': max_iters,
                     'param_scheduler': [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0,
                                              end=max_iters, by_epoch=False)]})
    cfg = prepare_train_config(config, work_dir=str(work_dir / 'train'), cfg_options=opts)
    cfg.visualizer.name = 'visualizer_train'
    train(cfg)
    result.checkpoint = _latest_checkpoint(work_dir / 'train')
    result.seconds['train'] = time.time() - t

    print_log('[3/5] Testing as trained (prediction images with --show-dir)', logger='current')
    t = time.time()
    metrics = _test(config, result.checkpoint, work_dir, 'test_trained', show_dir='vis',
                    cfg_options=data_opts)
    result.trained = _metric(metrics, 'mIoU')
    result.images = sorted(str(p) for p in (work_dir / 'test_trained').rglob('vis/**/*.png'))
    print_log('[4/5] Testing deployed (RepVGGDeployHook folds after loading)', logger='current')
    metrics = _test(config, result.checkpoint, work_dir, 'test_deployed', deploy=True,
                    cfg_options=data_opts)
    result.deployed = _metric(metrics, 'mIoU')
    result.seconds['test'] = time.time() - t

    if convert:
        print_log('[5/5] Converting with tools/deploy_convert.py and testing the result',
                  logger='current')
        t = time.time()
        out = work_dir / 'deploy' / 'pspnet_repvgg_deploy.pth'
        result.converted_checkpoint = _convert(config, result.checkpoint, out)
        metrics = _test(config, result.converted_checkpoint, work_dir, 'test_converted',
                        cfg_options={**data_opts, 'model.backbone.deploy': True})
        result.converted = _metric(metrics, 'mIoU')
        result.seconds['convert'] = time.time() - t
    result.seconds['total'] = time.time() - t0
    print(result.summary(), flush=True)
    return result


def run_cls_demo(work_dir: str | Path = 'work_dirs/demo_cls',
                 config: str = CLS_DEMO_CONFIG,
                 max_epochs: int | None = None,
                 threads: int | None = None,
                 seed: int | None = None) -> DemoResult:
    """Digits image folder -> train a RepVGG classifier -> test trained and deployed.

    Args:
        work_dir: Everything goes here (the data included); it is emptied first.
        config: The demo config (derived from ``configs/repvgg-a0_in1k.py``).
        max_epochs: Override the config's epochs.
        threads: torch threads (None: see :func:`set_threads`).
        seed: Override the config's training seed (``randomness.seed``).

    Returns:
        The measurements (``metric`` is top-1 accuracy in %).
    """
    config = _config_path(config)
    t0 = time.time()
    nthreads = set_threads(threads)
    work_dir = fresh_work_dir(work_dir)
    data_root = work_dir / 'digits'
    result = DemoResult(work_dir=str(work_dir), metric='top-1')
    install_mmengine_loader()
    print_log(f'[1/3] Digits image folder in {data_root} (torch threads: {nthreads})',
              logger='current')
    make_digits_folder(data_root)
    data_opts = data_root_options(data_root)
    result.seconds['data'] = time.time() - t0

    print_log(f'[2/3] Training {config}', logger='current')
    t = time.time()
    opts = dict(data_opts)
    if max_epochs is not None:
        opts.update({'train_cfg.max_epochs': max_epochs, 'train_cfg.val_interval': max_epochs,
                     'default_hooks.checkpoint.interval': max_epochs,
                     'param_scheduler.T_max': max_epochs, 'param_scheduler.end': max_epochs})
    if seed is not None:
        opts['randomness.seed'] = seed
    cfg = prepare_train_config(config, work_dir=str(work_dir / 'train'), cfg_options=opts)
    cfg.visualizer.name = f'visualizer_cls_train_{work_dir}'
    train(cfg)
    result.checkpoint = _latest_checkpoint(work_dir / 'train')
    result.seconds['train'] = time.time() - t

    print_log('[3/3] Testing as trained and deployed', logger='current')
    t = time.time()
    result.trained = _metric(_test(config, result.checkpoint, work_dir, 'test_trained',
                                   cfg_options=data_opts), 'accuracy/top1')
    result.deployed = _metric(_test(config, result.checkpoint, work_dir, 'test_deployed',
                                    deploy=True, cfg_options=data_opts), 'accuracy/top1')
    result.seconds['test'] = time.time() - t
    result.seconds['total'] = time.time() - t0
    print(result.summary(), flush=True)
    return result

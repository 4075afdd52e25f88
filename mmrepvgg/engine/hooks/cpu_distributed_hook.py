"""``CPUDistributedHook``: several CPU processes keep one set of BN statistics, and collect
their results under the work dir."""
from __future__ import annotations

import os.path as osp

import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ...registry import HOOKS


def bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The floating-point running statistics of every BN-like layer of ``model``."""
    return [buf for m in model.modules() if isinstance(m, _NormBase)
            for buf in (m.running_mean, m.running_var)
            if buf is not None and buf.is_floating_point()]


def average_bn_buffers(model: nn.Module) -> int:
    """Average the BN running statistics over every process (one all-reduce).

    Args:
        model: The model (not its DDP wrapper).

    Returns:
        How many buffers were averaged (0 without a process group of two or more, or
        without BN).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return 0
    buffers = bn_buffers(model)
    if not buffers:
        return 0
    flat = torch.cat([b.detach().reshape(-1).double() for b in buffers])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for buf in buffers:
        n = buf.numel()
        buf.copy_(flat[offset:offset + n].view_as(buf))
        offset += n
    return len(buffers)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class CPUDistributedHook(Hook):
    """What several CPU processes need (``tools/dist_train.sh`` / ``dist_test.sh`` without
    a GPU); :func:`mmrepvgg.runner.prepare.adapt_to_machine` adds it.

    - **One set of BN statistics.** SyncBN needs GPUs, so on CPUs each process runs plain
      BN and would keep the running statistics of its own batches: validation would then
      score each process's share of the images with other statistics than the checkpoint
      (rank 0's), and the number logged would not be the checkpoint's. After every
      training iteration (before ``CheckpointHook`` saves, before validation) the
      statistics are averaged over the processes, so every process and every checkpoint
      hold the same ones. As the running-average update is linear, they equal the average
      of what each process would have computed alone. One all-reduce per iteration.
    - **Result collection under the work dir.** mmengine's evaluators collect the results
      of the processes through files in ``./.dist_test/`` of the current directory and
      leave that folder behind; they use ``<work_dir>/.dist_collect/`` instead (removed
      after each collection).
    """

    priority = 'ABOVE_NORMAL'  # before CheckpointHook (VERY_LOW) saves in after_train_iter

    def before_run(self, runner) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            print_log(f'{dist.get_world_size()} CPU processes with BN: the BN running '
                      f'statistics are averaged over the {dist.get_world_size()} processes '
                      'after every training iteration, so validation and every checkpoint '
                      'use the same statistics', logger='current')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        average_bn_buffers(_unwrap(runner.model))

    def before_val_epoch(self, runner) -> None:
        average_bn_buffers(_unwrap(runner.model))  # e.g. a validation before training
        self._collect_under_work_dir(runner, runner.val_loop)

    def before_test_epoch(self, runner) -> None:
        self._collect_under_work_dir(runner, runner.test_loop)

    @staticmethod
    def _collect_under_work_dir(runner, loop) -> None:
        evaluator = getattr(loop, 'evaluator', None)
        for metric in getattr(evaluator, 'metrics', []):
            if getattr(metric, 'collect_dir', None) is None:
                metric.collect_dir = osp.join(runner.work_dir, '.dist_collect')

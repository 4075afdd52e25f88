"""Build an mmengine runner from a prepared config, train and test."""
from __future__ import annotations

import importlib

import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner

from ..utils.config import is_config_error, scope_of
from ..utils.errors import ConfigError, error_message
from .prepare import check_data, check_pretrained, use_cuda


def init_cpu_distributed(cfg: Config) -> bool:
    """Start the process group on CPUs before mmengine does.

    mmengine 0.10.7's ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` first, which
    fails without a GPU. On CPUs this starts the group itself (gloo, ``env://`` from
    torchrun's variables); the runner then finds it started and goes on.

    Args:
        cfg: The config (its ``launcher`` and ``env_cfg.dist_cfg``).

    Returns:
        Whether it started the group.
    """
    if cfg.get('launcher', 'none') != 'pytorch' or use_cuda() or not dist.is_available():
        return False
    if dist.is_initialized():
        return False
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    backend = dist_cfg.pop('backend', 'gloo')
    dist.init_process_group(backend=backend, **dist_cfg)
    print_log(f'Process group on CPU: {backend}, rank {dist.get_rank()} of '
              f'{dist.get_world_size()}', logger='current')
    return True


def close_distributed() -> None:
    """Wait for every rank, then close the process group (no-op without one).

    Without this a rank that finishes first (e.g. while rank 0 still writes the deployed
    checkpoint) exits with its gloo group alive, which can abort that process at
    interpreter exit ("terminate called without an active exception") and fail a run that
    completed.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def build_runner(cfg: Config) -> Runner:
    """The runner of the config's scope (``runner_type`` if the config names one).

    Args:
        cfg: A config from :func:`~mmrepvgg.runner.prepare_train_config` or
            :func:`~mmrepvgg.runner.prepare_test_config`.

    Returns:
        The runner.

    Raises:
        ConfigError: If the config (e.g. an unknown arch or dilation plan in
            ``--cfg-options``) builds no valid runner: mmengine's registries raise
            ``KeyError``, ``ValueError`` or ``TypeError`` for those
            (:func:`~mmrepvgg.utils.config.is_config_error`; other errors propagate).
    """
    init_cpu_distributed(cfg)
    try:
        if 'runner_type' not in cfg:
            return Runner.from_cfg(cfg)
        scope = scope_of(cfg)
        registry = importlib.import_module(f'{scope}.registry').RUNNERS
        return registry.build(cfg)
    except (KeyError, ValueError, TypeError) as err:
        if not is_config_error(err):
            raise
        raise ConfigError(f'{cfg.filename or "the config"}: {error_message(err)}') from err


def train(cfg: Config) -> Runner:
    """Train (after checking that the pretrained files exist).

    Args:
        cfg: A config from :func:`~mmrepvgg.runner.prepare_train_config`.

    Returns:
        The runner, after training.
    """
    if not cfg.get('resume') and not cfg.get('load_from'):
        check_pretrained(cfg)
    check_data(cfg, ('train', 'val') if cfg.get('val_cfg') else ('train', ))
    runner = build_runner(cfg)
    runner.train()
    return runner


def test(cfg: Config) -> dict:
    """Test and return the metrics.

    Args:
        cfg: A config from :func:`~mmrepvgg.runner.prepare_test_config`.

    Returns:
        The metrics (e.g. ``{'mIoU': ...}`` or ``{'accuracy/top1': ...}``).
    """
    check_data(cfg, ('test', ))
    runner = build_runner(cfg)
    return runner.test()

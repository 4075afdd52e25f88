"""Build an mmengine runner from a prepared config, train and test."""
from __future__ import annotations

import importlib

from mmengine.config import Config
from mmengine.runner import Runner

from .config import check_pretrained, scope_of


def build_runner(cfg: Config) -> Runner:
    """The runner of the config's scope (``runner_type`` if the config names one).

    Args:
        cfg: A config from :func:`~mmrepvgg.apis.prepare_train_config` or
            :func:`~mmrepvgg.apis.prepare_test_config`.

    Returns:
        The runner.
    """
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    scope = scope_of(cfg)
    registry = importlib.import_module(f'{scope}.registry').RUNNERS
    return registry.build(cfg)


def train(cfg: Config) -> Runner:
    """Train (after checking that the pretrained files exist).

    Args:
        cfg: A config from :func:`~mmrepvgg.apis.prepare_train_config`.

    Returns:
        The runner, after training.
    """
    if not cfg.get('resume') and not cfg.get('load_from'):
        check_pretrained(cfg)
    runner = build_runner(cfg)
    runner.train()
    return runner


def test(cfg: Config) -> dict:
    """Test and return the metrics.

    Args:
        cfg: A config from :func:`~mmrepvgg.apis.prepare_test_config`.

    Returns:
        The metrics (e.g. ``{'mIoU': ...}`` or ``{'accuracy/top1': ...}``).
    """
    runner = build_runner(cfg)
    return runner.test()

"""Config helpers every layer may use: loading, the default scope, SyncBN, and which errors
raised while building from a config mean a bad config (not a bug)."""
from __future__ import annotations

import os.path as osp
import re
from typing import Any, Iterator, Mapping

from mmengine.config import Config

#: Norm layer types that synchronize statistics across processes.
SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN')


def load_config(config: str | Config, cfg_options: Mapping | None = None,
                work_dir: str | None = None, launcher: str = 'none') -> Config:
    """Load a config, merge ``--cfg-options`` and set the work dir and launcher.

    Args:
        config: Config file (or an already loaded Config, which is copied).
        cfg_options: ``--cfg-options`` overrides.
        work_dir: Output folder; default: the config's ``work_dir`` or
            ``./work_dirs/<config name>``.
        launcher: ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``.

    Returns:
        The config.
    """
    cfg = config.copy() if isinstance(config, Config) else Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        name = osp.splitext(osp.basename(cfg.filename or 'config.py'))[0]
        cfg.work_dir = osp.join('./work_dirs', name)
    return cfg


def scope_of(cfg: Config) -> str:
    """The config's default scope: ``'mmseg'``, ``'mmpretrain'`` or another."""
    return cfg.get('default_scope') or 'mmengine'


def walk_dicts(obj: Any) -> Iterator[dict]:
    """Every dict inside a config value, depth first (the value itself included)."""
    if isinstance(obj, dict):
        yield obj
        for value in obj.values():
            yield from walk_dicts(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from walk_dicts(value)


def replace_sync_bn(model_cfg: dict, new_type: str = 'BN') -> int:
    """Replace every ``norm_cfg`` of type SyncBN in a model config, in place.

    Args:
        model_cfg: The ``model`` part of a config.
        new_type: The replacement norm type.

    Returns:
        How many norm configs were changed.
    """
    changed = 0
    for d in walk_dicts(model_cfg):
        if d.get('type') in SYNC_BN_TYPES:
            d['type'] = new_type
            changed += 1
    return changed


#: Python's messages for a call whose arguments do not fit the function's signature.
_BAD_ARGUMENTS = re.compile(
    r'got an unexpected keyword argument|missing \d+ required (positional|keyword-only) '
    r'argument|takes (from )?\d+ (to \d+ )?positional arguments? but \d+ (were|was) given|'
    r'got multiple values for (keyword )?argument')


def is_config_error(err: BaseException) -> bool:
    """Whether an error raised while building from a config means a bad config, not a bug.

    ``KeyError`` (an unknown type, arch or plan) and ``ValueError`` (a value the builders
    refuse) do. A ``TypeError`` only where the config's values meet code: raised in
    mmengine's registry (a constructor given an argument it does not take, a ``type`` that
    is not a name), by the arch table's type checks (``arch``, ``dilation_plan``), or an
    argument that does not fit an mmrepvgg block or backbone (``block_cfg``); any other
    ``TypeError`` is a bug and keeps its traceback.

    Args:
        err: The error.

    Returns:
        Whether to report it as :class:`ConfigError`.
    """
    if isinstance(err, (KeyError, ValueError)):
        return True
    if not isinstance(err, TypeError):
        return False
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get('__name__', '') if tb is not None else ''
    if module.startswith('mmengine.registry') or module == 'mmrepvgg.models.arch':
        return True
    return module.startswith('mmrepvgg.models') and bool(_BAD_ARGUMENTS.search(str(err)))

"""Config helpers every layer may use: loading, the default scope, SyncBN, and which errors
raised while building from a config mean a bad config (not a bug)."""
from __future__ import annotations

import os
import os.path as osp
import re
from typing import Any, Iterator, Mapping

from mmengine.config import Config

from .errors import ConfigError, error_message

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
    merge_options(cfg, cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        name = osp.splitext(osp.basename(cfg.filename or 'config.py'))[0]
        cfg.work_dir = osp.join('./work_dirs', name)
    return cfg


def merge_options(cfg: Config, cfg_options: Mapping | None) -> Config:
    """Merge ``--cfg-options`` into ``cfg`` (in place); one that does not fit is an error.

    mmengine raises a ``TypeError`` (or ``KeyError`` / ``ValueError``) when an option goes
    below a value that is not a dict, e.g. ``model.backbone.dilation_plan.strides=...`` on
    ``dilation_plan='full'``.

    Args:
        cfg: The config.
        cfg_options: ``key=value`` overrides (None or empty: nothing).

    Returns:
        The config.

    Raises:
        ConfigError: Naming the options and what mmengine said.
    """
    if not cfg_options:
        return cfg
    try:
        cfg.merge_from_dict(dict(cfg_options))
    except (TypeError, KeyError, ValueError, AttributeError) as err:
        keys = ', '.join(str(k) for k in cfg_options)
        raise ConfigError(f'--cfg-options {keys} do not fit {cfg.filename or "the config"}: '
                          f'{error_message(err)} (an option can only go below a dict; set '
                          'the whole value instead, e.g. key=dict(...))') from err
    return cfg


def config_files(config: str | os.PathLike) -> list[str]:
    """A config file and every file its ``_base_`` chain pulls in, as absolute paths.

    These are all inputs of whatever is made from the config: no tool may write over one of
    them (``check_output_path``'s ``inputs``). A base that cannot be read is left out
    (loading the config reports it).

    Args:
        config: The config file.

    Returns:
        The config first, then its bases, depth first, each once.
    """
    files: list[str] = []

    def visit(path: str) -> None:
        path = osp.abspath(path)
        if path in files:
            return
        files.append(path)
        try:
            bases = Config._get_base_files(path)
        except Exception:  # noqa: BLE001  (a config mmengine cannot parse: it says why)
            return
        for base in bases:
            try:
                base_path, _ = Config._get_cfg_path(base, path)
            except Exception:  # noqa: BLE001  (e.g. a package that is not installed)
                continue
            if osp.isfile(base_path):
                visit(base_path)

    visit(os.fspath(config))
    return files


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

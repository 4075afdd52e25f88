"""Registries of mmrepvgg.

mmrepvgg has its own scope, ``mmrepvgg``, whose registries are children of mmengine's root
registries. From any config (default_scope ``mmseg``, ``mmpretrain`` or none) the scoped names
``mmrepvgg.RepVGG`` and ``mmrepvgg.RepVGGDeployHook`` find our classes.

For convenience the same classes are also registered under their plain names where that
clobbers nothing: ``RepVGG`` in mmseg's MODELS (mmseg has no RepVGG) and
``RepVGGDeployHook`` in mmseg's and mmpretrain's HOOKS. mmpretrain's MODELS keeps its own
``RepVGG``: in mmpretrain configs write ``type='mmrepvgg.RepVGG'``.
"""
from __future__ import annotations

import importlib
import warnings

from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmrepvgg',
                  locations=['mmrepvgg.models'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmrepvgg',
                 locations=['mmrepvgg.engine'])


def register_alias(scope: str, registry_name: str, cls: type) -> bool:
    """Register ``cls`` under its own name in another package's registry, never clobbering.

    Args:
        scope: The package (``'mmseg'`` or ``'mmpretrain'``).
        registry_name: The registry in ``<scope>.registry`` (``'MODELS'``, ``'HOOKS'``).
        cls: The class to register.

    Returns:
        Whether it was registered (False if the package is missing or has that name already).
    """
    try:
        registry = getattr(importlib.import_module(f'{scope}.registry'), registry_name)
    except ImportError:
        return False
    existing = registry.module_dict.get(cls.__name__)
    if existing is cls:
        return True
    if existing is not None:
        warnings.warn(f'{scope} already registers {cls.__name__}; use '
                      f"type='mmrepvgg.{cls.__name__}' for mmrepvgg's one")
        return False
    registry.register_module(module=cls)
    return True

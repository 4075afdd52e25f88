"""mmrepvgg: RepVGG for OpenMMLab (mmsegmentation and mmpretrain).

Importing it registers the backbone and the hooks (:mod:`mmrepvgg.registry`) and makes
mmengine load local checkpoints weights-only with mmengine's own objects allowed
(:func:`mmrepvgg.checkpoint.install_mmengine_loader`), so that ``init_model``, the
inferencers, ``load_from`` and ``--resume`` work on torch >= 2.6 in any script whose config
has ``custom_imports=dict(imports=['mmrepvgg'])``. What can run code is refused or removed
unless you trust the files: pickled objects, and config source text that mmengine would
execute. Opt in with ``MMREPVGG_TRUST_CHECKPOINTS=1`` (or torch's own
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``); opt out of the loader with
``MMREPVGG_MMENGINE_LOADER=0``.
"""
import os

from . import engine, models  # noqa: F401  (registers modules)
from .checkpoint import install_mmengine_loader
from .models import QARepVGGBlock, RepVGG, RepVGGBlock, reparameterize
from .version import __version__

if os.environ.get('MMREPVGG_MMENGINE_LOADER', '1') != '0':
    install_mmengine_loader(trust=os.environ.get('MMREPVGG_TRUST_CHECKPOINTS') == '1')

__all__ = ['RepVGG', 'RepVGGBlock', 'QARepVGGBlock', 'reparameterize', '__version__']

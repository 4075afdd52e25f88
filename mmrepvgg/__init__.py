"""mmrepvgg: RepVGG for OpenMMLab (mmsegmentation and mmpretrain).

Importing it registers the backbone and the deploy hook (see :mod:`mmrepvgg.registry`),
and makes mmengine load local checkpoints weights-only with mmengine's own objects
allowed (:func:`mmrepvgg.checkpoint.install_mmengine_loader`), so that ``init_model``,
the inferencers, ``load_from`` and ``--resume`` work on torch >= 2.6 in any script whose
config has ``custom_imports=dict(imports=['mmrepvgg'])``. Files that need full unpickling
(which can run code) are still refused unless you opt in: ``MMREPVGG_TRUST_CHECKPOINTS=1``
or ``install_mmengine_loader(trust=True)``. Opt out of the loader with
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

"""mmrepvgg: RepVGG for OpenMMLab (mmsegmentation and mmpretrain).

Importing it registers the backbone and the deploy hook (see :mod:`mmrepvgg.registry`).
"""
from . import engine, models  # noqa: F401  (registers modules)
from .models import QARepVGGBlock, RepVGG, RepVGGBlock, reparameterize
from .version import __version__

__all__ = ['RepVGG', 'RepVGGBlock', 'QARepVGGBlock', 'reparameterize', '__version__']

"""Training-loop extensions: :class:`RepVGGDeployHook`, :class:`StrictLoadHook`."""
from .hooks import RepVGGDeployHook, StrictLoadHook

__all__ = ['RepVGGDeployHook', 'StrictLoadHook']

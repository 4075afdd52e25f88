"""Training-loop extensions: :class:`RepVGGDeployHook`."""
from .hooks import RepVGGDeployHook

__all__ = ['RepVGGDeployHook']

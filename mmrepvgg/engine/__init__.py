"""Training-loop extensions: :class:`RepVGGDeployHook`, :class:`StrictLoadHook`,
:class:`CPUDistributedHook`."""
from .hooks import CPUDistributedHook, RepVGGDeployHook, StrictLoadHook

__all__ = ['CPUDistributedHook', 'RepVGGDeployHook', 'StrictLoadHook']

"""Training-loop extensions: :class:`RepVGGDeployHook`, :class:`StrictLoadHook`,
:class:`CPUDistributedHook`."""
from .hooks import CPUDistributedHook, RepVGGDeployHook, StrictLoadHook, unwrap_model

__all__ = ['CPUDistributedHook', 'RepVGGDeployHook', 'StrictLoadHook', 'unwrap_model']

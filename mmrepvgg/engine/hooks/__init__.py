from .cpu_distributed_hook import CPUDistributedHook
from .deploy_hook import RepVGGDeployHook
from .strict_load_hook import StrictLoadHook

__all__ = ['CPUDistributedHook', 'RepVGGDeployHook', 'StrictLoadHook']

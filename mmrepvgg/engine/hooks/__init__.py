from .deploy_hook import RepVGGDeployHook
from .strict_load_hook import StrictLoadHook

__all__ = ['RepVGGDeployHook', 'StrictLoadHook']

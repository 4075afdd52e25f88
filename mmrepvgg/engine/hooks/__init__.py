from .deploy_hook import RepVGGDeployHook

__all__ = ['RepVGGDeployHook']

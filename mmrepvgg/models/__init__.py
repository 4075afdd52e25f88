from .arch import ARCH_ZOO, RepVGGArch, get_arch, layer_specs, resolve_dilation_plan
from .backbone import RepVGG
from .block import RepVGGBlock, reparameterize
from .fusion import fuse_branches, fuse_conv_bn, identity_kernel, pad_to_3x3

__all__ = [
    'ARCH_ZOO', 'RepVGGArch', 'get_arch', 'layer_specs', 'resolve_dilation_plan', 'RepVGG',
    'RepVGGBlock', 'reparameterize', 'fuse_branches', 'fuse_conv_bn', 'identity_kernel',
    'pad_to_3x3'
]

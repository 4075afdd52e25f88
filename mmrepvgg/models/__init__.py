from .arch import ARCH_ZOO, RepVGGArch, get_arch, layer_specs, resolve_dilation_plan
from .backbone import RepVGG
from .block import (BLOCK_TYPES, QARepVGGBlock, RepBlockBase, RepVGGBlock, build_block,
                    reparameterize)
from .fusion import fuse_branches, fuse_conv_bn, identity_kernel, pad_to_3x3

__all__ = [
    'ARCH_ZOO', 'RepVGGArch', 'get_arch', 'layer_specs', 'resolve_dilation_plan', 'RepVGG',
    'RepVGGBlock', 'QARepVGGBlock', 'RepBlockBase', 'BLOCK_TYPES', 'build_block',
    'reparameterize', 'fuse_branches', 'fuse_conv_bn', 'identity_kernel', 'pad_to_3x3'
]

from .arch import ARCH_ZOO, RepVGGArch, get_arch, layer_specs, resolve_dilation_plan
from .backbone import RepVGG, prepare_state_dict
from .block import (BLOCK_TYPES, QARepVGGBlock, RepBlockBase, RepVGGBlock, build_block,
                    reparameterize)
from .fusion import fuse_branches, fuse_conv_bn, identity_kernel, pad_to_3x3
from .loading import describe_geometry

__all__ = [
    'ARCH_ZOO', 'RepVGGArch', 'get_arch', 'layer_specs', 'resolve_dilation_plan', 'RepVGG',
    'prepare_state_dict', 'describe_geometry',
    'RepVGGBlock', 'QARepVGGBlock', 'RepBlockBase', 'BLOCK_TYPES', 'build_block',
    'reparameterize', 'fuse_branches', 'fuse_conv_bn', 'identity_kernel', 'pad_to_3x3'
]

"""Deployment: key maps of other RepVGG layouts, checkpoint conversion and verification."""
from .convert import (DEFAULT_TOLERANCE, FoldReport, VerificationError, build_model,
                      check_block_type, check_finite_state, compare_outputs,
                      convert_backbone_weights, convert_checkpoint, count_blocks, deploy_meta,
                      find_backbone, fold_and_verify, infer_arch, input_shape_from_config,
                      load_mapped_state, load_model, tensor_forward)
from .keymaps import (KEY_RULES, SOURCES, convert_key, convert_keys, detect_block_type,
                      detect_source)

__all__ = [
    'DEFAULT_TOLERANCE', 'FoldReport', 'VerificationError', 'build_model', 'check_block_type',
    'check_finite_state', 'compare_outputs', 'convert_backbone_weights', 'convert_checkpoint',
    'count_blocks', 'deploy_meta', 'find_backbone', 'fold_and_verify', 'infer_arch',
    'input_shape_from_config', 'load_mapped_state', 'load_model', 'tensor_forward', 'KEY_RULES',
    'SOURCES', 'convert_key', 'convert_keys', 'detect_block_type', 'detect_source'
]

"""Deployment: the config -> model builder and loader, folding with verification, checkpoint
conversion and key maps, ONNX export and evaluation, int8 quantization.

Only the torch-side modules are imported here; the ONNX modules (``onnx``, ``onnx_eval``,
``quantize``) import onnx / onnxruntime when first used.
"""
from .build import (TensorForward, build_model, build_model_cfg, count_blocks, find_backbone,
                    flatten_outputs, input_shape_from_config, load_mapped_state, load_model,
                    source_files, tensor_outputs, with_data_preprocessor)
from .convert import (backbone_checkpoint, deploy_meta, deployed_checkpoint, infer_arch,
                      plain_value)
from .keymaps import (KEY_RULES, SOURCES, convert_key, convert_keys, detect_block_type,
                      detect_source)
from .verify import (DEFAULT_TOLERANCE, FoldReport, check_finite_state, compare_outputs,
                     fold_and_verify)

__all__ = [
    'TensorForward', 'build_model', 'build_model_cfg', 'count_blocks', 'find_backbone',
    'flatten_outputs', 'input_shape_from_config', 'load_mapped_state', 'load_model',
    'source_files', 'tensor_outputs', 'with_data_preprocessor', 'backbone_checkpoint',
    'deploy_meta', 'deployed_checkpoint', 'infer_arch', 'plain_value', 'KEY_RULES', 'SOURCES',
    'convert_key', 'convert_keys', 'detect_block_type', 'detect_source', 'DEFAULT_TOLERANCE',
    'FoldReport', 'check_finite_state', 'compare_outputs', 'fold_and_verify'
]

"""Deployment: the config -> model builder, folding with verification, checkpoint
conversion and key maps, ONNX export, ONNX Runtime evaluation and int8 quantization.

Only the torch-side modules are imported here; the ONNX modules (``onnx_export``, ``ort``,
``onnx_eval``, ``quantize``) import onnx / onnxruntime when first used.
"""
from .build import (build_model, build_model_cfg, count_blocks, find_backbone,
                    input_shape_from_config, with_data_preprocessor)
from .convert import (check_block_type, convert_backbone_weights, convert_checkpoint,
                      deploy_meta, infer_arch, load_mapped_state, load_model)
from .forward import TensorForward, flatten_outputs, tensor_outputs
from .keymaps import (KEY_RULES, SOURCES, convert_key, convert_keys, detect_block_type,
                      detect_source)
from .verify import (DEFAULT_TOLERANCE, FoldReport, check_finite_state, compare_outputs,
                     fold_and_verify)

__all__ = [
    'build_model', 'build_model_cfg', 'count_blocks', 'find_backbone', 'input_shape_from_config',
    'with_data_preprocessor', 'check_block_type', 'convert_backbone_weights',
    'convert_checkpoint', 'deploy_meta', 'infer_arch', 'load_mapped_state', 'load_model',
    'TensorForward', 'flatten_outputs', 'tensor_outputs', 'KEY_RULES', 'SOURCES', 'convert_key',
    'convert_keys', 'detect_block_type', 'detect_source', 'DEFAULT_TOLERANCE', 'FoldReport',
    'check_finite_state', 'compare_outputs', 'fold_and_verify'
]

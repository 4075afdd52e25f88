"""Complexity counting, speed and memory benchmarks and plots in the paper's protocol; the
int8 weight-quantization error of folded kernels (:mod:`.quant_error`).

See docs/benchmark.md for the conventions and the commands (tools/complexity.py,
tools/benchmark.py, tools/plot_speed_accuracy.py).
"""
from .benchmark import (PAPER_PROTOCOL, benchmark_markdown, device_info, fold_time,
                        is_paper_protocol, run_benchmark, with_peers)
from .complexity import Complexity, count_complexity, winograd_factor
from .conv_bn import find_conv_bn_pairs, fold_conv_bn_, fuse_conv_bn_pairs
from .memory import LiveTensorTracker, peak_forward_memory
from .metafile import DEFAULT_METAFILE, PaperModel, find_paper_model, load_metafile
from .models import BASELINES, BuiltModel, TensorForward, build_model, default_input_shape
from .peers import PEER_SOURCES, build_peer, check_same_outputs, copy_weights, parse_peer
from .plot import plot_speed_accuracy, speed_accuracy_points
from .precision import float32_precision, measure_matmul_peak, tf32_state
from .quant_error import (LayerQuantError, folded_kernel_errors, quantize_symmetric, sqnr_db,
                          summarize_errors)

__all__ = [
    'Complexity', 'count_complexity', 'winograd_factor', 'find_conv_bn_pairs', 'fold_conv_bn_',
    'fuse_conv_bn_pairs', 'DEFAULT_METAFILE', 'PaperModel', 'find_paper_model', 'load_metafile',
    'BASELINES', 'BuiltModel', 'TensorForward', 'build_model', 'default_input_shape',
    'PAPER_PROTOCOL', 'benchmark_markdown', 'device_info', 'run_benchmark', 'LiveTensorTracker',
    'peak_forward_memory', 'plot_speed_accuracy', 'speed_accuracy_points', 'fold_time',
    'is_paper_protocol', 'with_peers', 'PEER_SOURCES', 'build_peer', 'parse_peer',
    'check_same_outputs', 'copy_weights',
    'float32_precision', 'measure_matmul_peak', 'tf32_state', 'LayerQuantError',
    'folded_kernel_errors', 'quantize_symmetric', 'sqnr_db', 'summarize_errors'
]

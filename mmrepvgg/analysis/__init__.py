"""Complexity counting, speed and memory benchmarks and plots in the paper's protocol; the
int8 weight-quantization error of folded kernels (:mod:`.quant_error`).

See docs/benchmark.md for the conventions and the commands (tools/complexity.py,
tools/benchmark.py, tools/plot_speed_accuracy.py).
"""
from .benchmark import compute_ratios, fold_time, run_benchmark
from .complexity import Complexity, count_complexity, winograd_factor
from .conv_bn import find_conv_bn_pairs, fold_conv_bn_, fuse_conv_bn_pairs
from .memory import LiveTensorTracker, peak_forward_memory
from .metafile import PaperModel, find_paper_model, load_metafile
from .models import BASELINES, BuiltModel, build_from_spec, default_input_shape
from .peers import PEER_SOURCES, build_peer, check_same_outputs, copy_weights, parse_peer
from .plot import plot_speed_accuracy, speed_accuracy_points
from .quant_error import (LayerQuantError, folded_kernel_errors, quantize_symmetric, sqnr_db,
                          summarize_errors)
from .report import PAPER_PROTOCOL, benchmark_markdown, is_paper_protocol
from .variants import with_peers

__all__ = [
    'compute_ratios', 'fold_time', 'run_benchmark', 'Complexity', 'count_complexity',
    'winograd_factor', 'find_conv_bn_pairs', 'fold_conv_bn_', 'fuse_conv_bn_pairs',
    'LiveTensorTracker', 'peak_forward_memory', 'PaperModel', 'find_paper_model',
    'load_metafile', 'BASELINES', 'BuiltModel', 'build_from_spec', 'default_input_shape',
    'PEER_SOURCES', 'build_peer', 'check_same_outputs', 'copy_weights', 'parse_peer',
    'plot_speed_accuracy', 'speed_accuracy_points', 'LayerQuantError', 'folded_kernel_errors',
    'quantize_symmetric', 'sqnr_db', 'summarize_errors', 'PAPER_PROTOCOL', 'benchmark_markdown',
    'is_paper_protocol', 'with_peers'
]

"""The tools' library entry points (they own the paths), called as the deploy tests call them."""
from __future__ import annotations

import os
from typing import Any

from mmrepvgg.deploy.onnx import ExportOptions
from mmrepvgg.deploy.quantize import QuantizeOptions, QuantSettings
from tests.helpers import load_tool

#: ``tools/export_onnx.py``'s ``export_file(config, checkpoint, out, **options)``.
export_onnx = load_tool('export_onnx').export_file
#: ``tools/deploy_convert.py``'s ``convert_checkpoint(config, checkpoint, out, ...)``.
convert_checkpoint = load_tool('deploy_convert').convert_checkpoint
#: ``tools/convert_weights.py``'s ``convert_backbone_weights(checkpoint, out, ...)``.
convert_backbone_weights = load_tool('convert_weights').convert_backbone_weights


def quantize_checkpoint(cfg: Any, checkpoint: str | os.PathLike, out: str | os.PathLike,
                        settings: QuantSettings | None = None,
                        shape: tuple[int, int] | None = None, report: Any = None,
                        fp32_out: Any = None, **options: Any) -> dict:
    """``tools/quantize.py``'s ``quantize_file`` with :class:`QuantizeOptions` fields as
    keywords (``shape``: the export's)."""
    opts = QuantizeOptions(settings or QuantSettings(), export=ExportOptions(shape=shape),
                           **options)
    return load_tool('quantize').quantize_file(cfg, checkpoint, out, opts, report=report,
                                               fp32_out=fp32_out)

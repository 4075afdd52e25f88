"""``python -m mmrepvgg_runtime MODEL.onnx INPUT... --out-dir DIR`` (as tools/infer_onnx.py)."""
import sys

from .cli import main

sys.exit(main())

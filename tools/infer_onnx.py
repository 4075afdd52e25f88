"""Run an exported ONNX model (fp32 or int8) on images with onnxruntime, numpy and OpenCV only.

Examples::

    python tools/infer_onnx.py pspnet.onnx leftImg8bit/val/frankfurt --out-dir preds/
    python tools/infer_onnx.py a0_int8.onnx photo.jpg more_photos/ --out-dir preds/

Segmentors write ``DIR/<stem>.png`` (label map in train ids, at the image size) and
``DIR/<stem>_overlay.jpg``; classifiers ``DIR/predictions.json``. Imports neither torch nor
mmcv / mmengine / mmseg / mmpretrain (see mmrepvgg_runtime).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmrepvgg_runtime.cli import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())

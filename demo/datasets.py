"""Data for the demos, the tests and ``tools/make_tiny_cityscapes.py`` /
``tools/prepare_cityscapes.py``: Cityscapes (the official preparation step and a tiny
synthetic stand-in in the official layout) and scikit-learn's digits as an image folder
or as a tiny ImageNet.
They make data; they are not part of the installable package."""
from .cityscapes import (TRAIN_CLASSES, cityscapes_root_ok, make_tiny_cityscapes,
                         prepare_cityscapes)
from .digits import make_digits_folder
from .imagenet import make_tiny_imagenet

__all__ = ['TRAIN_CLASSES', 'cityscapes_root_ok', 'make_tiny_cityscapes', 'prepare_cityscapes',
           'make_digits_folder', 'make_tiny_imagenet']

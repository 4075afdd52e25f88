"""Data preparation: Cityscapes (real and tiny synthetic) and scikit-learn's digits."""
from .cityscapes import (TRAIN_CLASSES, cityscapes_root_ok, make_tiny_cityscapes,
                         prepare_cityscapes)
from .digits import make_digits_folder

__all__ = ['TRAIN_CLASSES', 'cityscapes_root_ok', 'make_tiny_cityscapes', 'prepare_cityscapes',
           'make_digits_folder']

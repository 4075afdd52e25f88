"""Library functions behind ``tools/train.py``, ``tools/test.py`` and the demos."""
from .config import (add_deploy_hook, adapt_to_machine, check_pretrained,
                     enable_prediction_images, load_config, prepare_test_config,
                     prepare_train_config, replace_sync_bn)
from .runner import build_runner, test, train

__all__ = [
    'add_deploy_hook', 'adapt_to_machine', 'check_pretrained', 'enable_prediction_images',
    'load_config', 'prepare_test_config', 'prepare_train_config', 'replace_sync_bn',
    'build_runner', 'test', 'train'
]

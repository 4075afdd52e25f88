"""Library functions behind ``tools/train.py``, ``tools/test.py`` and the demos."""
from .config import (ConfigError, DataNotFoundError, PretrainedNotFoundError,
                     adapt_to_machine, add_deploy_hook, check_data, check_pretrained,
                     enable_prediction_images, load_config, prepare_test_config,
                     prepare_train_config, replace_sync_bn)
from .runner import build_runner, close_distributed, init_cpu_distributed, test, train

__all__ = [
    'ConfigError', 'DataNotFoundError', 'PretrainedNotFoundError', 'adapt_to_machine',
    'add_deploy_hook', 'check_data', 'check_pretrained', 'enable_prediction_images',
    'load_config', 'prepare_test_config', 'prepare_train_config', 'replace_sync_bn',
    'build_runner', 'close_distributed', 'init_cpu_distributed', 'test', 'train'
]

"""Library functions behind ``tools/train.py``, ``tools/test.py`` and the demos: a
config prepared for the machine and the command line, then mmengine's runner."""
from .prepare import (adapt_to_machine, add_deploy_hook, check_data, check_pretrained,
                      check_test_out, enable_prediction_images, prepare_test_config,
                      prepare_train_config)
from .run import build_runner, close_distributed, init_cpu_distributed, test, train

__all__ = [
    'adapt_to_machine', 'add_deploy_hook', 'check_data', 'check_pretrained', 'check_test_out',
    'enable_prediction_images', 'prepare_test_config', 'prepare_train_config',
    'build_runner', 'close_distributed', 'init_cpu_distributed', 'test', 'train'
]

"""Every shipped ImageNet config runs as written (issue 22); see test_run_configs.py."""
import pytest

from tests.configs.conftest import CLS, check_run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize('name', CLS)
def test_imagenet_config_runs_as_written(cls_runs, name):
    result = cls_runs[name]
    check_run(result, repvgg=True)
    assert result['test']['accuracy/top1'] == result['val']['accuracy/top1']

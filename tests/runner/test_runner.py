"""Which errors of building a model or runner from a config are reported as ConfigError (one
error: line) and which are bugs that keep their traceback."""
from __future__ import annotations

import pytest
from mmengine.config import Config

import mmrepvgg  # noqa: F401
import mmrepvgg.models.backbone as backbone_module
from demo.demos import CLS_DEMO_CONFIG, load_demo_config
from mmrepvgg.deploy import build_model
from mmrepvgg.runner.prepare import prepare_train_config
from mmrepvgg.runner.run import build_runner
from mmrepvgg.utils.config import is_config_error
from mmrepvgg.utils.errors import ConfigError


def cls_config(**backbone) -> Config:
    return Config(dict(default_scope='mmpretrain', model=dict(
        type='ImageClassifier', backbone=dict(dict(type='mmrepvgg.RepVGG', arch='A0'),
                                              **backbone),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=2, in_channels=1280))))


@pytest.mark.parametrize('backbone,message', [
    (dict(foo=1), "RepVGG.__init__() got an unexpected keyword argument 'foo'"),  # registry
    (dict(block_cfg=dict(type='RepVGGBlock', foo=1)),
     "RepBlockBase.__init__() got an unexpected keyword argument 'foo'"),  # block builder
    (dict(arch=5), 'arch must be a name, a dict or a RepVGGArch, got int'),  # arch table
    (dict(arch='C9'), "Unknown RepVGG arch 'C9'"),  # a KeyError, without quotes around it
    (dict(dilation_plan='half'), 'Unknown dilation plan'),
])
def test_config_mistakes_are_config_errors(backbone, message):
    with pytest.raises(ConfigError) as err:
        build_model(cls_config(**backbone))
    assert str(err.value).startswith(f'the config: the model does not build: {message}')
    assert is_config_error(err.value.__cause__)


def _bug(*args, **kwargs):
    return None + 1  # a TypeError that no config causes


def test_a_type_error_inside_the_code_is_a_bug(monkeypatch):
    monkeypatch.setattr(backbone_module, 'build_block', _bug)
    with pytest.raises(TypeError, match='unsupported operand') as err:
        build_model(cls_config())
    assert not isinstance(err.value, ConfigError) and not is_config_error(err.value)


def test_build_runner_reports_config_errors_and_keeps_bugs(tmp_path, monkeypatch):
    def runner_cfg(**options) -> Config:
        return prepare_train_config(load_demo_config(CLS_DEMO_CONFIG, tmp_path / 'digits'),
                                    work_dir=str(tmp_path / 'work'), cfg_options=options)

    with pytest.raises(ConfigError, match=r"repvgg-small_digits\.py: RepVGG\.__init__\(\) got "
                       "an unexpected keyword argument 'foo'"):
        build_runner(runner_cfg(**{'model.backbone.foo': 1}))
    monkeypatch.setattr(backbone_module, 'build_block', _bug)
    with pytest.raises(TypeError, match='unsupported operand') as err:
        build_runner(runner_cfg())
    assert not isinstance(err.value, ConfigError)

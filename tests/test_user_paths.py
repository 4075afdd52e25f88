"""Every OpenMMLab entry point gets the right weights, or a clear refusal (issue 17).

mmseg's ``init_model`` + ``inference_model`` and ``MMSegInferencer``, mmpretrain's
``init_model``, ``get_model`` and ``ImageClassificationInferencer``, each with the trained,
the hook-deployed and the converted checkpoint, give the outputs that ``tools/test.py``'s
model gives (rel <= 1e-4, fp32), with nothing but the config's ``custom_imports``. A
checkpoint under another geometry is refused by ``tools/test.py`` (with and without
``--deploy``), ``deploy_convert``, ``export_onnx``, ``quantize`` and the APIs. The entry points
run in fresh processes (:mod:`tests.user_paths`): mmengine keeps global state.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import load_tool, one_error_line

ROOT = Path(__file__).resolve().parents[1]
SEG = 'configs/demo/pspnet_repvgg-small_tiny-cityscapes.py'
PY = sys.executable
TOLERANCE = 1e-4
SEG_APIS = ('init_model+inference_model', 'MMSegInferencer')
CLS_APIS = ('init_model', 'get_model', 'ImageClassificationInferencer',
            'ImageClassificationInferencer scores')


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    if check:
        assert proc.returncode == 0, f'{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc


def _dump(config: str, data_root: Path, out: Path, **options) -> Path:
    from mmengine.config import Config
    cfg = Config.fromfile(str(ROOT / config))
    cfg.merge_from_dict({f'{k}_dataloader.dataset.data_root': f'{data_root}/'
                         for k in ('train', 'val', 'test')})
    cfg.merge_from_dict(options)
    cfg.dump(str(out))
    return out


_PROBED: dict[tuple, tuple[dict, str]] = {}


def probe(task: str, config: Path, checkpoint: Path, out: Path, deploy: bool = False) -> dict:
    """What :mod:`tests.user_paths` measured (its log is written beside ``out``); each
    combination runs once per session."""
    key = (task, str(config), str(checkpoint), deploy)
    if key not in _PROBED:
        proc = _run([PY, '-m', 'tests.user_paths', task, str(config), str(checkpoint),
                     str(out)] + (['--deploy'] if deploy else []))
        _PROBED[key] = json.loads(out.read_text()), proc.stdout + proc.stderr
    result, log = _PROBED[key]
    out.with_suffix('.log').write_text(log)
    return result


# ---------------------------------------------------------------------------- segmentation

@pytest.fixture(scope='module')
def seg_run(tmp_path_factory) -> dict[str, Path]:
    """The seg demo config on a tiny Cityscapes, trained 30 iterations with checkpoints every
    20 and ``save_last=False`` (the issue's case: the last regular checkpoint is iteration
    20, the model folded after training is iteration 30); the converted iter_20.pth."""
    from tests.deploy.helpers import convert_checkpoint
    root = tmp_path_factory.mktemp('seg_paths')
    _run([PY, 'tools/make_tiny_cityscapes.py', str(root / 'cs'), '--num-train', '4',
          '--num-val', '2', '--size', '64', '128', '--prepare'])
    config = _dump(SEG, root / 'cs', root / 'seg.py')
    work = root / 'train'
    _run([PY, 'tools/train.py', str(config), '--work-dir', str(work), '--cfg-options',
          'train_cfg.max_iters=30', 'train_cfg.val_interval=30', 'train_dataloader.batch_size=2',
          'default_hooks.checkpoint.interval=20', 'default_hooks.checkpoint.save_last=False'])
    converted = root / 'converted.pth'
    convert_checkpoint(str(config), work / 'iter_20.pth', converted)
    return dict(root=root, config=config, trained=work / 'iter_20.pth',
                hook=work / 'iter_30_deploy.pth', converted=converted,
                plan_none=_dump(SEG, root / 'cs', root / 'seg_plan_none.py',
                                **{'model.backbone.dilation_plan': None}))


def test_the_hook_names_the_seg_file_after_the_iteration_it_holds(seg_run):
    work = seg_run['trained'].parent
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_20.pth', 'iter_30_deploy.pth']
    meta = torch.load(seg_run['hook'], weights_only=True)['meta']
    assert meta['iter'] == 30 and meta['deploy'] is True


@pytest.mark.parametrize('which', ['trained', 'hook', 'converted'])
def test_mmseg_entry_points_give_tools_test_outputs(seg_run, tmp_path, which):
    result = probe('seg', seg_run['config'], seg_run[which], tmp_path / 'r.json')
    assert result['images'] == 2 and 'reference' not in result, result
    for api in SEG_APIS:
        assert isinstance(result[api], float) and result[api] <= TOLERANCE, (api, result)
    assert result['deploy'] == (which != 'trained')
    log = (tmp_path / 'r.log').read_text()
    assert 'do not match exactly' not in log  # mmengine's warning of a partial load
    if which != 'trained':  # one line per model says what happened
        assert 'loaded a deployed (folded) state into a training-time model: 9 blocks' in log


def test_tools_test_deploy_gives_the_same_outputs(seg_run, tmp_path):
    plain = probe('seg', seg_run['config'], seg_run['trained'], tmp_path / 'a.json')
    folded = probe('seg', seg_run['config'], seg_run['trained'], tmp_path / 'b.json',
                   deploy=True)
    converted = probe('seg', seg_run['config'], seg_run['converted'], tmp_path / 'c.json')
    assert plain['metric'] == folded['metric'] == converted['metric']
    for api in SEG_APIS:
        assert folded[api] <= TOLERANCE  # the APIs vs tools/test.py --deploy


@pytest.mark.parametrize('which', ['trained', 'hook'])
def test_mmseg_entry_points_refuse_another_geometry(seg_run, tmp_path, which):
    result = probe('seg', seg_run['plan_none'], seg_run[which], tmp_path / 'r.json')
    for path in ('reference', *SEG_APIS):  # tools/test.py's model and both APIs
        message = result[path]['error']
        assert message.startswith('CheckpointError: RepVGG-custom (backbone): ')
        assert 'stage_3 s1 d2' in message and 'stage_3 s2' in message  # both geometries
        assert '\n' not in message


@pytest.mark.parametrize('which, deploy', [('trained', True), ('hook', False)])
def test_tools_test_refuses_another_geometry_in_one_line(seg_run, which, deploy):
    proc = _run([PY, 'tools/test.py', str(seg_run['config']), str(seg_run[which]),
                 '--work-dir', str(seg_run['root'] / f'refused_{which}_{deploy}'),
                 '--cfg-options', 'model.backbone.dilation_plan=None']
                + (['--deploy'] if deploy else []), check=False)
    assert proc.returncode == 1
    errors = [x for x in proc.stderr.splitlines() if x.startswith('error: ')]
    assert len(errors) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    line = errors[0]
    assert "does not fit the model's geometry" in line and 'first stage_3.0: checkpoint ' \
        'stride 1, dilation 2, groups 1, model stride 2, dilation 1' in line


@pytest.mark.parametrize('tool', ['deploy_convert', 'export_onnx', 'quantize'])
def test_the_deploy_tools_refuse_another_geometry(seg_run, tmp_path, capsys, tool):
    checkpoint = seg_run['trained'] if tool == 'deploy_convert' else seg_run['hook']
    out = tmp_path / ('out.pth' if tool == 'deploy_convert' else 'out.onnx')
    status = load_tool(tool).main([str(seg_run['plan_none']), str(checkpoint), str(out)])
    assert status == 1 and not out.exists()
    line = one_error_line(capsys)
    assert "does not fit the model's geometry" in line and 'stage_3 s1 d2' in line


# ---------------------------------------------------------------------------- classification

@pytest.fixture(scope='module')
def cls_files(digits_classifier, tmp_path_factory) -> dict[str, Path]:
    from tests.deploy.helpers import convert_checkpoint
    root = tmp_path_factory.mktemp('cls_paths')
    config = _dump('configs/demo/repvgg-small_digits.py', digits_classifier / 'digits',
                   root / 'digits.py')
    trained = Path((digits_classifier / 'train' / 'last_checkpoint').read_text().strip())
    converted = root / 'converted.pth'
    convert_checkpoint(str(config), trained, converted)
    return dict(config=config, trained=trained,
                hook=trained.with_name(f'{trained.stem}_deploy.pth'), converted=converted)


@pytest.mark.parametrize('which', ['trained', 'hook', 'converted'])
def test_mmpretrain_entry_points_give_tools_test_outputs(cls_files, tmp_path, which):
    result = probe('cls', cls_files['config'], cls_files[which], tmp_path / 'r.json')
    assert result['images'] == 8 and result['metric'] > 60, result
    for api in CLS_APIS:
        assert isinstance(result[api], float) and result[api] <= TOLERANCE, (api, result)
    assert 'do not match exactly' not in (tmp_path / 'r.log').read_text()


# ------------------------------------------------------------------- import mmrepvgg only

_PLAIN_SCRIPT = '''
import sys
from mmseg.apis import init_model
model = init_model(sys.argv[1], sys.argv[2], device='cpu')  # custom_imports: mmrepvgg
print('loaded', type(model).__name__, model.backbone.deploy)
'''


@pytest.mark.parametrize('opt_out', [False, True])
def test_custom_imports_alone_make_mmengine_checkpoints_load(seg_run, opt_out):
    """A script that never calls mmrepvgg: the config's custom_imports install the
    weights-only loader; mmengine's own iter_N.pth (HistoryBuffer, numpy) then loads on
    torch >= 2.6. MMREPVGG_MMENGINE_LOADER=0 keeps mmengine's loader (which fails)."""
    env = dict(_env(), MMREPVGG_MMENGINE_LOADER='0' if opt_out else '1')
    proc = subprocess.run([PY, '-c', _PLAIN_SCRIPT, str(seg_run['config']),
                           str(seg_run['trained'])], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    if opt_out:
        assert proc.returncode != 0 and 'Weights only load failed' in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert 'loaded EncoderDecoder False' in proc.stdout


_RESUME_SCRIPT = '''
import sys
from mmengine.config import Config
from mmengine.runner import Runner
cfg = Config.fromfile(sys.argv[1])  # imports mmrepvgg (custom_imports)
cfg.work_dir, cfg.load_from, cfg.resume = sys.argv[3], sys.argv[2], True
cfg.train_cfg.max_iters = 21
cfg.train_cfg.val_interval = 1000
cfg.train_dataloader.batch_size = 2
cfg.default_hooks.checkpoint.interval = 1000
runner = Runner.from_cfg(cfg)
runner.train()
print('resumed to', runner.iter)
'''


def test_resume_in_anyones_script(seg_run, tmp_path):
    proc = _run([PY, '-c', _RESUME_SCRIPT, str(seg_run['config']), str(seg_run['trained']),
                 str(tmp_path / 'work')])
    assert 'resumed to 21' in proc.stdout
    # the run's own deployed file: named after what it holds
    assert torch.load(tmp_path / 'work' / 'iter_21_deploy.pth',
                      weights_only=True)['meta']['iter'] == 21

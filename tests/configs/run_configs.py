"""Run shipped configs as written: train one iteration, validate, test (the deploy hook folds).

    python tests/configs/run_configs.py --cityscapes DIR --imagenet DIR --work-dir DIR \
        [--full-size] --out results.json CONFIG...

Used by tests/configs/test_run_configs.py (in a subprocess: mmengine's runner keeps global
state, so one process per scope) and, with ``--full-size``, by ``make configs-full``.

Only what issue 22 allows is overridden: the data roots, the length of training (one
iteration / epoch, validated at its end, checkpoint after it), batch size and workers, and
the pretrained file (none). Without ``--full-size`` the backbone is shrunk (a tiny RepVGG arch
with the config's groups, dilation plan and block type; ResNet-18 for the ResNet baselines),
the heads' ``in_channels`` follow it and the segmentation heads' hidden width (``channels``)
is that of the seg demo config. Pipelines, data preprocessor, head types, losses,
evaluators, test mode and hooks are the config's.

Each config's result (metrics of validation and test, the deployed checkpoint and its
verification, or the error with its traceback) goes into the JSON file; a failing config does
not stop the others.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

#: The tiny RepVGG of the CI runs: every stage present, stage 4 long enough for the 'fast'
#: plan to leave its first layer undilated, widths divisible by the groups (g2, g4).
TINY_BLOCKS = (1, 2, 5, 1)
TINY_WIDTHS = (0.25, 0.25, 0.25, 0.5)


def overrides(cfg, data_root: str, full_size: bool) -> dict:
    """The ``--cfg-options`` of one run (see the module docstring)."""
    from mmrepvgg.models import get_arch
    seg = cfg.default_scope == 'mmseg'
    opts: dict = {}
    for loader in ('train', 'val', 'test'):
        opts[f'{loader}_dataloader.dataset.data_root'] = data_root
        opts[f'{loader}_dataloader.num_workers'] = 0
        opts[f'{loader}_dataloader.persistent_workers'] = False
    # two training images: one iteration (and BN in PSP's 1x1 pooling needs two samples)
    opts['train_dataloader.batch_size'] = 2
    if seg:
        opts.update({'train_cfg.max_iters': 1, 'train_cfg.val_interval': 1})
    else:
        opts.update({'train_cfg.max_epochs': 1, 'train_cfg.val_interval': 1})
    opts['default_hooks.checkpoint.interval'] = 1
    backbone = cfg.model.backbone
    if backbone.get('init_cfg'):
        opts['model.backbone.init_cfg'] = None
    if full_size:
        return opts
    if backbone.type.endswith('RepVGG'):
        spec = get_arch(backbone.arch)
        tiny = dict(num_blocks=TINY_BLOCKS, width_factors=TINY_WIDTHS, groups=spec.groups,
                    use_se=spec.use_se)
        channels = get_arch(tiny).stage_channels
        opts['model.backbone.arch'] = dict(_delete_=True, **tiny)  # replaces the arch name
    else:  # mmseg's ResNetV1c: ResNet-18 (BasicBlock: stage channels 64-512)
        opts['model.backbone.depth'] = 18
        channels = (64, 128, 256, 512)
    if seg:
        opts['model.decode_head.in_channels'] = channels[3]
        opts['model.auxiliary_head.in_channels'] = channels[2]
        # and the heads' widths (as the seg demo config's): at 1024x2048 the PSP bottleneck
        # of 512 channels over 8 sliding windows is most of the run's time on a CPU
        opts['model.decode_head.channels'] = 64
        opts['model.auxiliary_head.channels'] = 32
    else:
        opts['model.head.in_channels'] = channels[3]
    return opts


def _scalars(runner, prefix: str) -> dict:
    return {k[len(prefix):]: float(v.current()) for k, v in runner.message_hub.log_scalars.items()
            if k.startswith(prefix)}


def run_config(config: str, data_root: str, work_dir: Path, full_size: bool) -> dict:
    """Train one iteration (validated at its end; the deploy hook writes the folded model),
    then test the trained checkpoint as ``tools/test.py --deploy`` does (folded first)."""
    from mmengine.config import Config

    from mmrepvgg.engine import RepVGGDeployHook
    from mmrepvgg.models import RepBlockBase
    from mmrepvgg.runner import build_runner, prepare_test_config, prepare_train_config, train

    name = Path(config).stem
    opts = overrides(Config.fromfile(config), data_root, full_size)
    cfg = prepare_train_config(config, work_dir=str(work_dir / 'train'), cfg_options=opts)
    cfg.experiment_name = f'{name}_train'  # one logger and scope per run in this process
    start = time.perf_counter()
    runner = train(cfg)
    val = _scalars(runner, 'val/')
    (hook, ) = [h for h in runner.hooks if isinstance(h, RepVGGDeployHook)]
    checkpoint = (Path(runner.work_dir) / 'last_checkpoint').read_text().strip()
    test_cfg = prepare_test_config(config, checkpoint, work_dir=str(work_dir / 'test'),
                                   deploy=True, cfg_options=opts)
    test_cfg.experiment_name = f'{name}_test'
    tester = build_runner(test_cfg)
    test = {k: float(v) for k, v in tester.test().items()}
    blocks = [m.deploy for m in tester.model.modules() if isinstance(m, RepBlockBase)]
    return dict(ok=True, val=val, test=test, checkpoint=checkpoint,
                deployed=str(hook.deploy_checkpoint) if hook.deploy_checkpoint else None,
                fold_max_rel=hook.report.max_rel if hook.report else None,
                blocks_at_test=len(blocks), folded_at_test=sum(blocks),
                train_pipeline=[t['type'] for t in cfg.train_pipeline],
                preprocessor_size=(cfg.model.get('data_preprocessor') or {}).get('size'),
                test_mode=cfg.model.get('test_cfg', {}).get('mode'),
                seconds=round(time.perf_counter() - start, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('configs', nargs='+')
    parser.add_argument('--cityscapes', required=True, help='Cityscapes-layout root')
    parser.add_argument('--imagenet', required=True, help='ImageNet-layout root')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--out', required=True, help='JSON file of the results')
    parser.add_argument('--full-size', action='store_true', help='keep the backbone as written')
    args = parser.parse_args(argv)
    import mmengine.config.config as mmengine_config

    import mmrepvgg  # noqa: F401

    # mmengine lays out every config it logs and dumps with yapf: layout only (the same config
    # text, unformatted), and a sixth of a tiny run's CPU time
    mmengine_config.FormatCode = lambda text, **kwargs: (text, False)
    from mmengine.config import Config
    results = {}
    for config in args.configs:
        name = str(Path(config).resolve().relative_to(ROOT / 'configs'))
        scope = Config.fromfile(config).default_scope
        data = args.cityscapes if scope == 'mmseg' else args.imagenet
        try:
            results[name] = run_config(config, data, Path(args.work_dir) / Path(name).stem,
                                       args.full_size)
        except Exception:  # noqa: BLE001  (recorded; the test reports it)
            results[name] = dict(ok=False, error=traceback.format_exc()[-4000:])
        print(f'{name}: {"ok" if results[name]["ok"] else "FAILED"}', flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Training-loop hooks: :class:`RepVGGDeployHook` (test the plain model, write a verified
deployed checkpoint), :class:`StrictLoadHook` (``load_from`` and ``--resume`` load every key
or fail) and :class:`CPUDistributedHook` (several CPU processes keep one set of BN
statistics)."""
from __future__ import annotations

import copy
import logging
import os.path as osp
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, EMAHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop, find_latest_checkpoint
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..checkpoint import (check_state_dict, drop_config_code, extract_state_dict,
                          installed_trust, is_deployed_state, is_optional_key,
                          save_checkpoint_atomic)
from ..deploy import (DEFAULT_TOLERANCE, FoldReport, check_finite_state, count_blocks,
                      deploy_meta, fold_and_verify, plain_value)
from ..deploy.build import check_block_type
from ..models import RepBlockBase, prepare_state_dict, reparameterize
from ..registry import HOOKS, register_alias
from ..utils.errors import CheckpointError, FoldError, VerificationError


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP / FSDP wrapper (mmengine's ``is_model_wrapper``), or ``model``."""
    return model.module if is_model_wrapper(model) else model


def _first(batch: Any, n: int) -> Any:
    """The first ``n`` samples of a collated batch (dict / list / tensor)."""
    if isinstance(batch, dict):
        return {k: _first(v, n) for k, v in batch.items()}
    if isinstance(batch, (list, tuple, torch.Tensor)):
        return batch[:n]
    return batch


def _run_of(path: Path) -> str | None:
    """The run (timestamp) a deployed checkpoint records in ``meta['run']``; None if the
    file records none or cannot be read (read memory-mapped: the tensors stay on disk)."""
    try:
        meta = torch.load(path, map_location='cpu', weights_only=True, mmap=True)['meta']
        return str(meta['run'])
    except Exception:  # noqa: BLE001  (anything unreadable is another run's file)
        return None


def _free_name(folder: Path, unit: str, tag: str) -> Path:
    """``<unit>_<tag>_deploy.pth``, with ``-2``, ``-3``, ... until no file has the name."""
    path, n = folder / f'{unit}_{tag}_deploy.pth', 1
    while path.exists():
        n += 1
        path = folder / f'{unit}_{tag}-{n}_deploy.pth'
    return path


@HOOKS.register_module()
class RepVGGDeployHook(Hook):
    """Fold RepVGG blocks for testing; write a verified deployed checkpoint after training.

    * ``before_test`` (after the checkpoint is loaded, before the test epoch): folds every
      block of the model (and of an ``EMAHook``'s averaged copy, so its parameter swaps
      stay consistent), so the plain model is the one evaluated and timed.
    * ``after_train``: deep-copies the trained model (the EMA weights if an ``EMAHook`` is
      present: they are what mmengine saves and evaluates), folds the copy, checks it
      against the unfolded copy on the first ``num_samples`` samples of a val/test batch
      (a random input if there is no such loader), logs the max abs/rel difference and
      writes ``{'state_dict', 'meta'}``. The live model is never folded during training
      or validation. After a diverged run (non-finite weights or outputs) it raises
      :class:`~mmrepvgg.utils.errors.VerificationError` and writes nothing.

    The file is named after what it holds, ``iter_N_deploy.pth`` / ``epoch_N_deploy.pth``
    (the loop's unit when it is folded), beside the ``CheckpointHook``'s files (its local
    ``out_dir``, else the work dir); ``meta`` records ``iter``, ``epoch`` and the ``run``
    (timestamp). ``iter_N.pth`` and ``iter_N_deploy.pth`` always hold the same model: when
    this run saves ``iter_N.pth`` over another run's, that run's ``iter_N_deploy.pth`` is
    moved to ``iter_N_<its run>_deploy.pth`` (``before_save_checkpoint``); a deployed file
    of this run whose name another run's file holds (no ``iter_N.pth`` of this run) gets
    this run's timestamp instead. No file is ever replaced.

    Args:
        fold_on_test: Fold before testing.
        save_after_train: Write the deployed checkpoint after training.
        num_samples: Samples of the verification batch.
        tolerance: Max relative output difference allowed (None: only log it).
        input_shape: ``(H, W)`` of the random input used without a val/test loader.
    """

    priority = 'LOW'  # after the checkpoint hook's saving in after_train

    def __init__(self,
                 fold_on_test: bool = True,
                 save_after_train: bool = True,
                 num_samples: int = 1,
                 tolerance: float | None = DEFAULT_TOLERANCE,
                 input_shape: tuple[int, int] = (224, 224)) -> None:
        self.fold_on_test = fold_on_test
        self.save_after_train = save_after_train
        self.num_samples = num_samples
        self.tolerance = tolerance
        self.input_shape = tuple(input_shape)
        self.deploy_checkpoint: Path | None = None
        self.report: FoldReport | None = None

    def before_test(self, runner) -> None:
        if not self.fold_on_test:
            return
        model = unwrap_model(runner.model)
        targets = [model] + [h.ema_model.module for h in self._ema_hooks(runner)]
        if count_blocks(model) == 0:
            print_log('RepVGGDeployHook: the model has no RepVGG blocks; nothing to fold',
                      logger='current', level=logging.WARNING)
            return
        folded = count_blocks(model, deployed=False)
        for target in targets:
            reparameterize(target.eval())
        print_log(f'RepVGGDeployHook: folded {folded} RepVGG blocks before testing'
                  + (' (already deployed)' if folded == 0 else '')
                  + (' (and the EMA copy)' if len(targets) > 1 else ''), logger='current')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Move another run's ``<unit>_deploy.pth`` aside before ``<unit>.pth`` is replaced."""
        meta = checkpoint.get('meta') or {}
        if not (self.save_after_train and is_main_process()) or 'iter' not in meta:
            return
        unit = (f'epoch_{meta["epoch"]}' if isinstance(runner.train_loop, EpochBasedTrainLoop)
                else f'iter_{meta["iter"]}')
        stale = self._folder(runner) / f'{unit}_deploy.pth'
        run = _run_of(stale) if stale.exists() else runner.timestamp
        if run == runner.timestamp:
            return
        kept = _free_name(stale.parent, unit, run or 'earlier')
        stale.rename(kept)
        print_log(f'RepVGGDeployHook: {unit}.pth is replaced by this run; {stale.name}, folded '
                  f'from the file it replaces, is kept as {kept.name}', logger='current',
                  level=logging.WARNING)

    def after_train(self, runner) -> None:
        if not self.save_after_train or not is_main_process():
            return
        source = self._trained_model(runner)
        if count_blocks(source, deployed=False) == 0:
            print_log('RepVGGDeployHook: the model has no unfolded RepVGG blocks; no deployed '
                      'checkpoint written', logger='current', level=logging.WARNING)
            return
        # (train(): the copy is the trained model: weights loaded under another geometry
        # for fine-tuning are this run's weights now)
        model = copy.deepcopy(source).float().train()
        inputs, data_samples = self._verification_batch(runner, model)
        path = self._deploy_path(runner)
        try:
            self.report = fold_and_verify(model, inputs, data_samples, tolerance=self.tolerance)
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            check_finite_state(state)
        except (FoldError, VerificationError) as err:
            raise VerificationError(f'RepVGGDeployHook: {path.name} not written: {err}') from err
        print_log(f'RepVGGDeployHook: {self.report.summary()}', logger='current')
        meta = deploy_meta(model, runner.cfg, iter=runner.iter, epoch=runner.epoch,
                           ema=bool(self._ema_hooks(runner)), max_abs_diff=self.report.max_abs,
                           max_rel_diff=self.report.max_rel, run=runner.timestamp)
        dataset_meta = getattr(model, 'dataset_meta', None)
        if dataset_meta is None and runner.train_dataloader is not None:
            dataset_meta = getattr(runner.train_dataloader.dataset, 'metainfo', None)
        if plain_value(dataset_meta):
            meta['dataset_meta'] = plain_value(dataset_meta)
        save_checkpoint_atomic({'state_dict': state, 'meta': meta}, path)
        self.deploy_checkpoint = path
        print_log(f'RepVGGDeployHook: wrote deployed checkpoint {path}', logger='current')

    @staticmethod
    def _ema_hooks(runner) -> list[EMAHook]:
        return [h for h in runner.hooks if isinstance(h, EMAHook) and hasattr(h, 'ema_model')]

    def _trained_model(self, runner) -> nn.Module:
        """The weights mmengine saves and evaluates: the EMA copy if there is one."""
        ema = self._ema_hooks(runner)
        return ema[0].ema_model.module if ema else unwrap_model(runner.model)

    def _verification_batch(self, runner, model: nn.Module) -> tuple[Any, Any]:
        for name in ('val', 'test'):
            if getattr(runner, f'_{name}_loop', None) is None:
                continue
            try:
                dataloader = getattr(runner, f'{name}_loop').dataloader
                batch = _first(next(iter(dataloader)), self.num_samples)
            except Exception as err:  # noqa: BLE001  (fall back to a random input)
                print_log(f'RepVGGDeployHook: no batch from the {name} loader ({err})',
                          logger='current', level=logging.WARNING)
                continue
            with torch.no_grad():
                data = model.data_preprocessor(batch, False)
            inputs = data['inputs'] if isinstance(data, dict) else data[0]
            samples = data.get('data_samples') if isinstance(data, dict) else None
            return inputs.float(), samples
        print_log('RepVGGDeployHook: no val/test loader; verifying on a random input of '
                  f'size {self.input_shape}', logger='current', level=logging.WARNING)
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(0)
        return torch.randn(self.num_samples, 3, *self.input_shape, generator=gen).to(device), None

    @staticmethod
    def _folder(runner) -> Path:
        """The ``CheckpointHook``'s local ``out_dir``, else the work dir."""
        folder = Path(runner.work_dir)
        for hook in runner.hooks:
            out_dir = getattr(hook, 'out_dir', None)
            if isinstance(hook, CheckpointHook) and isinstance(out_dir, str) \
                    and '://' not in out_dir and Path(out_dir).is_dir():
                folder = Path(out_dir)
        return folder

    def _deploy_path(self, runner) -> Path:
        """``<folder>/iter_N_deploy.pth`` (``epoch_N``) for the live model's iteration
        (epoch); if another run's file has that name, this run's timestamp is added."""
        unit = (f'epoch_{runner.epoch}' if isinstance(runner.train_loop, EpochBasedTrainLoop)
                else f'iter_{runner.iter}')
        path = self._folder(runner) / f'{unit}_deploy.pth'
        if not path.exists():
            return path
        taken, path = path, _free_name(path.parent, unit, runner.timestamp)
        print_log(f'RepVGGDeployHook: {taken} exists (another run\'s, beside that run\'s '
                  f'{unit}.pth); it is kept and this run\'s deployed checkpoint is written as '
                  f'{path.name}', logger='current', level=logging.WARNING)
        return path


register_alias('mmseg', 'HOOKS', RepVGGDeployHook)
register_alias('mmpretrain', 'HOOKS', RepVGGDeployHook)


#: What the hook does with a deployed checkpoint: ``'fold'`` loads it (testing: the model
#: switches to the deployed form), ``'error'`` refuses it (training).
DEPLOYED_ACTIONS = ('fold', 'error')


def _geometry_change(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """The first layer whose geometry (``rep_geometry``) in ``state`` differs from the
    model's, described in one line; None if every recorded geometry fits."""
    for key, value in model.state_dict().items():
        theirs = state.get(key)
        if is_optional_key(key) and isinstance(theirs, torch.Tensor) \
                and theirs.tolist() != value.tolist():
            names = ('block type', 'stride', 'dilation', 'groups')
            return (f'{key.rsplit(".", 1)[0] or "the block"}: checkpoint '
                    + ', '.join(f'{n} {v}' for n, v in zip(names, theirs.tolist()))
                    + ', model ' + ', '.join(f'{n} {v}' for n, v in zip(names, value.tolist())))
    return None


@HOOKS.register_module()
class StrictLoadHook(Hook):
    """Make ``load_from`` and ``--resume`` strict; refuse a deployed checkpoint for training.

    mmengine loads ``load_from`` non-strictly (a checkpoint that does not fit only logs its
    unexpected keys and leaves the rest at random initialization). In
    ``after_load_checkpoint``, before mmengine copies the state, this hook adapts it to the
    model's form (:func:`~mmrepvgg.models.prepare_state_dict`: either form into either
    model) and checks every key and shape (:func:`~mmrepvgg.checkpoint.check_state_dict`);
    mmengine and an ``EMAHook`` then load the adapted state. Unless checkpoints are
    trusted, it removes the config source text mmengine would execute
    (:func:`~mmrepvgg.checkpoint.drop_config_code`; also for files fetched from a URL).

    ``deployed='fold'`` (``tools/test.py``): the checkpoint must also fit the model's
    geometry. ``deployed='error'`` (``tools/train.py``): a deployed checkpoint is refused
    in one line; a training-time one of another geometry initializes fine-tuning. A resume
    is all or nothing: a deployed checkpoint, one without the training state, of the other
    block type or another geometry, or with any key that does not fit is refused in one
    line.

    Args:
        deployed: ``'fold'`` or ``'error'``.
    """

    priority = 'VERY_HIGH'  # before EMAHook copies the state dict into its model

    def __init__(self, deployed: str = 'fold') -> None:
        if deployed not in DEPLOYED_ACTIONS:
            raise ValueError(f'deployed must be one of {DEPLOYED_ACTIONS}, got {deployed!r}')
        self.deployed = deployed

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not installed_trust():
            drop_config_code(checkpoint)
        if getattr(runner, '_resume', False):
            self._check_resume(runner, checkpoint)
            return
        source = getattr(runner, '_load_from', None) or 'the checkpoint'
        state = extract_state_dict(checkpoint)
        model = unwrap_model(runner.model)
        if self.deployed == 'error' and is_deployed_state(state) \
                and count_blocks(model, deployed=False):
            raise CheckpointError(
                f'load_from {source} holds a deployed (folded) model (branch_reparam keys): '
                'there are no branches left to train; load the training-time checkpoint '
                '(iter_N.pth, not iter_N_deploy.pth)')
        try:
            state = prepare_state_dict(model, state,
                                       purpose='eval' if self.deployed == 'fold' else 'train')
        except CheckpointError:
            # a checkpoint of another model altogether: its keys outside the RepVGG blocks
            # (whose form may differ) say more than its geometry
            blocks = tuple(f'{name}.' for name, m in model.named_modules()
                           if isinstance(m, RepBlockBase) and name)
            check_state_dict(model, state, source=str(source), skip=blocks)
            raise
        check_state_dict(model, state, source=str(source))
        if isinstance(checkpoint.get('state_dict'), Mapping):
            checkpoint['state_dict'] = state  # adapted once: mmengine and EMAHook load it

    @staticmethod
    def _check_resume(runner, checkpoint: dict) -> None:
        """Refuse, in one line, a checkpoint that ``--resume`` would half-load."""
        source = (getattr(runner, '_load_from', None)
                  or find_latest_checkpoint(runner.work_dir) or 'the checkpoint')
        state = extract_state_dict(checkpoint)
        model = unwrap_model(runner.model)
        if is_deployed_state(state) and count_blocks(model, deployed=False):
            raise CheckpointError(
                f'--resume {source} holds a deployed (folded) model (branch_reparam keys): '
                'training resumes the multi-branch model; resume from the training-time '
                'checkpoint (iter_N.pth, not iter_N_deploy.pth)')
        meta = checkpoint.get('meta')
        missing = [name for name, ok in (
            ("meta['iter']", isinstance(meta, dict) and 'iter' in meta),
            ("meta['epoch']", isinstance(meta, dict) and 'epoch' in meta),
            ('message_hub', 'message_hub' in checkpoint)) if not ok]
        if missing:
            raise CheckpointError(
                f'--resume {source} is not a checkpoint of a training run (no '
                f'{", ".join(missing)}): resume from an iter_N.pth / epoch_N.pth that '
                'tools/train.py wrote; to start from weights only, use load_from')
        try:
            check_block_type(model, state, str(source))
            check_state_dict(model, state, source=str(source))
        except CheckpointError as err:  # one line: a resume is all or nothing
            raise CheckpointError('--resume: ' + '; '.join(
                line.strip() for line in str(err).splitlines() if line.strip())) from err
        changed = _geometry_change(model, state)
        if changed:
            raise CheckpointError(
                f'--resume {source} was trained under another geometry ({changed}): a resume '
                'continues the same run; to fine-tune these weights under this geometry, '
                'start from them with load_from')


def bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The floating-point running statistics of every BN-like layer of ``model``."""
    return [buf for m in model.modules() if isinstance(m, _NormBase)
            for buf in (m.running_mean, m.running_var)
            if buf is not None and buf.is_floating_point()]


def average_bn_buffers(model: nn.Module) -> int:
    """Average the BN running statistics over every process (one all-reduce).

    Args:
        model: The model (not its DDP wrapper).

    Returns:
        How many buffers were averaged (0 without a process group of two or more, or
        without BN).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return 0
    buffers = bn_buffers(model)
    if not buffers:
        return 0
    flat = torch.cat([b.detach().reshape(-1).double() for b in buffers])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for buf in buffers:
        n = buf.numel()
        buf.copy_(flat[offset:offset + n].view_as(buf))
        offset += n
    return len(buffers)


@HOOKS.register_module()
class CPUDistributedHook(Hook):
    """What several CPU processes need (``tools/dist_train.sh`` without a GPU); added by
    :func:`mmrepvgg.runner.adapt_to_machine`.

    - **One set of BN statistics.** SyncBN needs GPUs, so each CPU process runs plain BN on
      its own batches, and validation would score with other statistics than the
      checkpoint's (rank 0's). After every training iteration (before ``CheckpointHook``
      saves) the running statistics are averaged over the processes (one all-reduce; the
      running-average update is linear, so this is the average of what each would hold).
    - **Results collected under the work dir** (``<work_dir>/.dist_collect/``), not in
      ``./.dist_test/`` of the current directory, which mmengine leaves behind.
    """

    priority = 'ABOVE_NORMAL'  # before CheckpointHook (VERY_LOW) saves in after_train_iter

    def before_run(self, runner) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            print_log(f'{dist.get_world_size()} CPU processes with BN: the BN running '
                      f'statistics are averaged over the {dist.get_world_size()} processes '
                      'after every training iteration, so validation and every checkpoint '
                      'use the same statistics', logger='current')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        average_bn_buffers(unwrap_model(runner.model))

    def before_val_epoch(self, runner) -> None:
        average_bn_buffers(unwrap_model(runner.model))  # e.g. a validation before training
        self._collect_under_work_dir(runner, runner.val_loop)

    def before_test_epoch(self, runner) -> None:
        self._collect_under_work_dir(runner, runner.test_loop)

    @staticmethod
    def _collect_under_work_dir(runner, loop) -> None:
        evaluator = getattr(loop, 'evaluator', None)
        for metric in getattr(evaluator, 'metrics', []):
            if getattr(metric, 'collect_dir', None) is None:
                metric.collect_dir = osp.join(runner.work_dir, '.dist_collect')

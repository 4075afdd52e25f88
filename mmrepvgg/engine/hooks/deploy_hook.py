"""``RepVGGDeployHook``: test the plain model, and write a deployed checkpoint after training."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, EMAHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop
from torch import nn

from ...checkpoint import save_checkpoint_atomic
from ...deploy.build import count_blocks
from ...deploy.convert import deploy_meta, plain_value
from ...deploy.verify import DEFAULT_TOLERANCE, FoldReport, check_finite_state, fold_and_verify
from ...models import reparameterize
from ...registry import HOOKS, register_alias
from ...utils.errors import FoldError, VerificationError


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def _first(batch: Any, n: int) -> Any:
    """The first ``n`` samples of a collated batch (dict / list / tensor)."""
    if isinstance(batch, dict):
        return {k: _first(v, n) for k, v in batch.items()}
    if isinstance(batch, (list, tuple, torch.Tensor)):
        return batch[:n]
    return batch


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
      or validation.

    The file is named after what it holds: the iteration (iteration-based loops) or epoch
    (epoch-based loops) of the model when it is folded, ``iter_N_deploy.pth`` /
    ``epoch_N_deploy.pth``, also when the last regular checkpoint is older (``interval``
    not dividing the run) or there is none; ``meta`` records the same ``iter`` and
    ``epoch``. It goes where the ``CheckpointHook`` writes (its local ``out_dir``), else
    into the work dir. A file of that name from another run is never replaced: this run's
    is then written as ``iter_N_<run timestamp>_deploy.pth`` (the log names the file)
    unless ``force=True``.

    A model without RepVGG blocks is left alone with a warning. After a diverged run (NaN or
    Inf weights, BN statistics or outputs) ``after_train`` raises
    :class:`~mmrepvgg.deploy.VerificationError` and writes nothing: a deployed checkpoint is
    only written when it is finite and verified.

    Args:
        fold_on_test: Fold before testing.
        save_after_train: Write the deployed checkpoint after training.
        num_samples: Samples of the verification batch.
        tolerance: Max relative output difference allowed (None: only log it).
        input_shape: ``(H, W)`` of the random input used without a val/test loader.
        force: Replace an existing deployed checkpoint of the same name (default: keep it
            and write this run's under a name with the run's timestamp).
    """

    priority = 'LOW'  # after the checkpoint hook's saving in after_train

    def __init__(self,
                 fold_on_test: bool = True,
                 save_after_train: bool = True,
                 num_samples: int = 1,
                 tolerance: float | None = DEFAULT_TOLERANCE,
                 input_shape: tuple[int, int] = (224, 224),
                 force: bool = False) -> None:
        self.fold_on_test = fold_on_test
        self.save_after_train = save_after_train
        self.num_samples = num_samples
        self.tolerance = tolerance
        self.input_shape = tuple(input_shape)
        self.force = force
        self.deploy_checkpoint: Path | None = None
        self.report: FoldReport | None = None

    # ----------------------------------------------------------------- test time
    def before_test(self, runner) -> None:
        if not self.fold_on_test:
            return
        model = _unwrap(runner.model)
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

    # ----------------------------------------------------------------- after training
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
        path = self._deploy_path(runner, self.force)
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
        save_checkpoint_atomic({'state_dict': state, 'meta': meta}, path, force=self.force)
        self.deploy_checkpoint = path
        print_log(f'RepVGGDeployHook: wrote deployed checkpoint {path}', logger='current')

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _ema_hooks(runner) -> list[EMAHook]:
        return [h for h in runner.hooks if isinstance(h, EMAHook) and hasattr(h, 'ema_model')]

    def _trained_model(self, runner) -> nn.Module:
        """The weights mmengine saves and evaluates: the EMA copy if there is one."""
        ema = self._ema_hooks(runner)
        return ema[0].ema_model.module if ema else _unwrap(runner.model)

    def _verification_batch(self, runner, model: nn.Module) -> tuple[Any, Any]:
        for name in ('val', 'test'):
            loop = getattr(runner, f'_{name}_loop', None)
            if loop is None:
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
    def _deploy_path(runner, force: bool = False) -> Path:
        """``<dir>/iter_N_deploy.pth`` (``epoch_N``) for the live model's iteration (epoch).

        ``<dir>``: the ``CheckpointHook``'s local ``out_dir``, else the work dir. An
        existing file (another run's) is kept unless ``force``: the name then gets this
        run's timestamp.
        """
        folder = Path(runner.work_dir)
        for hook in runner.hooks:
            out_dir = getattr(hook, 'out_dir', None)
            if isinstance(hook, CheckpointHook) and isinstance(out_dir, str) \
                    and '://' not in out_dir and Path(out_dir).is_dir():
                folder = Path(out_dir)
        unit = (f'epoch_{runner.epoch}' if isinstance(runner.train_loop, EpochBasedTrainLoop)
                else f'iter_{runner.iter}')
        path = folder / f'{unit}_deploy.pth'
        if path.exists() and not force:
            taken = path
            path = folder / f'{unit}_{runner.timestamp}_deploy.pth'
            n = 1
            while path.exists():
                n += 1
                path = folder / f'{unit}_{runner.timestamp}-{n}_deploy.pth'
            print_log(f'RepVGGDeployHook: {taken} exists (another run\'s); it is kept and this '
                      f'run\'s deployed checkpoint is written as {path.name}', logger='current',
                      level=logging.WARNING)
        return path


register_alias('mmseg', 'HOOKS', RepVGGDeployHook)
register_alias('mmpretrain', 'HOOKS', RepVGGDeployHook)

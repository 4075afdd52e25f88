"""``StrictLoadHook``: ``load_from`` loads every key or fails; deployed checkpoints are known."""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import nn

from ...checkpoint import check_state_dict, extract_state_dict, is_deployed_state
from ...models import RepBlockBase, reparameterize
from ...registry import HOOKS
from ...utils.errors import CheckpointError

#: What the hook may do with a deployed checkpoint for a training-time model.
DEPLOYED_ACTIONS = ('fold', 'error')


def _unfolded_blocks(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, RepBlockBase) and not m.deploy)


def fold_structure(model: nn.Module) -> int:
    """Turn every RepVGG block of a model about to receive deployed weights into its plain form.

    The values folded are overwritten by the checkpoint right after; only the structure
    matters. The model's training/eval mode is kept.

    Returns:
        How many blocks were folded.
    """
    n = _unfolded_blocks(model)
    training = model.training
    reparameterize(model.eval())
    model.train(training)
    return n


@HOOKS.register_module()
class StrictLoadHook(Hook):
    """Make ``load_from`` strict, and recognize a deployed (folded) checkpoint.

    mmengine loads ``load_from`` non-strictly: a checkpoint that does not fit the model
    (a deployed one for a training-time model, another arch) only logs its unexpected keys
    and leaves the rest of the model at its random initialization. This hook checks the
    loaded state dict against the model before mmengine copies it
    (``after_load_checkpoint``) with :func:`mmrepvgg.checkpoint.check_state_dict`: every
    missing, unexpected or mis-shaped key is an error.

    A checkpoint with ``branch_reparam`` keys holds a deployed model. If the model is a
    training-time one, ``deployed='fold'`` (``tools/test.py``) folds the model's blocks (and
    an ``EMAHook``'s copy) before loading, so the deployed model is tested, as with
    ``model.backbone.deploy=True``, and says so in the log; ``deployed='error'``
    (``tools/train.py``'s ``load_from``) stops: RepVGG trains the multi-branch model.

    Resuming (``--resume``) is left to mmengine.

    Args:
        deployed: ``'fold'`` or ``'error'``.
    """

    priority = 'VERY_HIGH'  # before EMAHook copies the state dict into its model

    def __init__(self, deployed: str = 'fold') -> None:
        if deployed not in DEPLOYED_ACTIONS:
            raise ValueError(f'deployed must be one of {DEPLOYED_ACTIONS}, got {deployed!r}')
        self.deployed = deployed

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if getattr(runner, '_resume', False):
            return
        source = getattr(runner, '_load_from', None) or 'the checkpoint'
        state = extract_state_dict(checkpoint)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if is_deployed_state(state) and _unfolded_blocks(model):
            if self.deployed == 'error':
                raise CheckpointError(
                    f'load_from {source} holds a deployed (folded) model (branch_reparam '
                    'keys); RepVGG trains the multi-branch model: load the training-time '
                    'checkpoint (iter_N.pth, not iter_N_deploy.pth)')
            n = fold_structure(model)
            for hook in runner.hooks:  # EMAHook copies the checkpoint into its model next
                if hasattr(hook, 'ema_model'):
                    fold_structure(hook.ema_model.module)
            print_log(f'{source} holds a deployed model (branch_reparam keys): folded the '
                      f'{n} RepVGG blocks of the model before loading it, so the deployed '
                      'model is what runs (as with --cfg-options model.backbone.deploy=True)',
                      logger='current')
        check_state_dict(model, state, source=str(source))

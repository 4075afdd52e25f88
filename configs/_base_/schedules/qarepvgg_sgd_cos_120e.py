# QARepVGG's ImageNet recipe (Chu et al. 2022, "Make RepVGG Greater Again: A
# Quantization-aware Approach"), read from its public code, github.com/cxxgtxy/QARepVGG:
# train_QAV2_B0.sh, main.py, train.py and B0_log.txt (QARepVGG-B0, 74.78 top-1 after 120
# epochs). It is RepVGG's 120-epoch recipe (./imagenet_sgd_cos_120e.py) except:
#
# - Weight decay 4e-5, not 1e-4 (train_QAV2_B0.sh: --wd 4e-5).
# - Which parameters decay: unchanged rule, every conv and fc kernel, no BN weight/bias and
#   no bias (its SGD parameter groups skip 'bn' and 'bias' keys; timm's optimizer, its other
#   path, skips 1-D parameters). For the QARepVGG block this means the bare 1x1 conv
#   (`branch_1x1.weight`) IS decayed like every kernel (there is no BN behind it any more),
#   and the post BN (`post_norm`) is not: norm_decay_mult=0 covers it with the other BNs.
# - RepVGG's optional "custom L2" (--custwd) is off in that run; mmrepvgg has none anyway.
# Kept from RepVGG's recipe, as the QARepVGG run does: SGD momentum 0.9; cosine from the base
# lr to 0 per iteration, no warm-up (its log's mean lr is 0.39998 in epoch 0 and 2.4e-5 in
# epoch 119); 120 epochs; RandomResizedCrop + flip; plain cross-entropy; no EMA
# (--no-model-ema). Its batch is 1024 (8 GPUs x 128) at lr 0.4 (main.py: 0.2 x batch / 512),
# the same lr per sample as RepVGG's 0.1 at 256, which we keep (8 x 32; auto_scale_lr keeps
# the ratio for other batch sizes). Its 2x lr on biases ("made no difference", train.py) is
# not reproduced.
_base_ = './imagenet_sgd_cos_120e.py'
optim_wrapper = dict(optimizer=dict(weight_decay=4e-5))

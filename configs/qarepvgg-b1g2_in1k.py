# QARepVGG-B1g2 (Chu et al. 2022, "Make RepVGG Greater Again: A Quantization-aware Approach"):
# RepVGG-B1g2 built with QARepVGG blocks (bare 1x1 and identity branches, one BN after the sum)
# and trained with QARepVGG's recipe, RepVGG's 120-epoch one with weight decay 4e-5 on every
# conv/fc kernel, the bare 1x1 included (every choice and its source:
# _base_/schedules/qarepvgg_sgd_cos_120e.py). It folds (RepVGGDeployHook,
# tools/deploy_convert.py) into exactly the plain RepVGG-B1g2. Not yet trained here.
#   bash tools/dist_train.sh configs/qarepvgg-b1g2_in1k.py 8
_base_ = [
    './_base_/models/repvgg_in1k.py', './_base_/datasets/imagenet_bs32.py',
    './_base_/schedules/qarepvgg_sgd_cos_120e.py', './_base_/cls_runtime.py'
]
model = dict(
    backbone=dict(arch='B1g2', block_cfg=dict(type='QARepVGGBlock')),
    head=dict(in_channels=2048))

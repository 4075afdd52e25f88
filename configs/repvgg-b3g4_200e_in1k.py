# RepVGG paper Table 5, row "RepVGG-B3g4" (80.21 top-1): 200 epochs with 5-epoch warmup,
# cosine, label smoothing, mixup and AutoAugment; batch 256 (8 GPUs x 32).
#   bash tools/dist_train.sh configs/repvgg-b3g4_200e_in1k.py 8
_base_ = [
    './_base_/models/repvgg_lbs-mixup_in1k.py', './_base_/datasets/imagenet_bs32_autoaug.py',
    './_base_/schedules/imagenet_sgd_cos_200e_warmup.py', './_base_/cls_runtime.py'
]
model = dict(backbone=dict(arch='B3g4'), head=dict(in_channels=2560))

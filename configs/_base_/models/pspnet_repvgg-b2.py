# PSPNet (Zhao et al., CVPR 2017) with an ImageNet-pretrained RepVGG backbone:
# RepVGG paper Sect. 4.3 / Table 8. The leaf configs change `arch`, `dilation_plan`, the
# channel counts and the pretrained file.
#
# SyncBN for multi-GPU training (as mmseg's PSPNet configs). One process (one GPU or the
# CPU): mmengine's runner reverts SyncBN to BN by itself; several CPU processes:
# tools/train.py replaces it by BN (see docs/training.md, "SyncBN").
norm_cfg = dict(type='SyncBN', requires_grad=True)

# ImageNet-pretrained RepVGG in mmrepvgg's keys, made by tools/convert_weights.py from the
# official / mmpretrain / timm weights, or trained with configs/repvgg-*_in1k.py. A missing
# file stops training with instructions; train from scratch with
# --cfg-options model.backbone.init_cfg=None.
pretrained = 'checkpoints/repvgg-b2_in1k.pth'

# `size` (the crop the batches are padded to) is set by the leaf configs from the dataset's
# crop_size, as in mmseg's configs: data_preprocessor = dict(size=crop_size).
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='RepVGG',
        arch='B2',
        out_indices=(0, 1, 2, 3),  # paper stages 2-5
        # 'full': every 3x3 conv of the last two stages dilated (2, 4), output stride 8,
        # as the dilated ResNets of PSPNet; 'fast': only the last 5 layers.
        dilation_plan='full',
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(
        type='PSPHead',
        in_channels=2560,  # RepVGG-B2 paper stage 5
        in_index=3,
        channels=512,
        pool_scales=(1, 2, 3, 6),
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    # auxiliary FCN head on paper stage 4 (out_indices 2), as PSPNet's on ResNet's res4
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=640,  # RepVGG-B2 paper stage 4
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    # sliding crop_size (713x713) windows over the full 1024x2048 image (stride 2/3 of the
    # crop, as PSPNet's own evaluation); the leaf configs set the window to crop_size
    test_cfg=dict(mode='slide', stride=(476, 476)))

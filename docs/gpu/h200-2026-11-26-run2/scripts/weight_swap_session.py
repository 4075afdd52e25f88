import torch, timm, time, copy
from timm.utils import reparameterize_model
from mmrepvgg.analysis.models import build_model
from mmrepvgg.models import reparameterize
torch.backends.cudnn.benchmark = True
torch.backends.cudnn.allow_tf32 = True
dev = 'cuda'
x = torch.randn(128, 3, 224, 224, device=dev)
def bench(models, n=30, rounds=5):
    res = {k: [] for k in models}
    with torch.no_grad():
        for k, m in models.items():
            for _ in range(10): m(x)
        for r in range(rounds):
            for k, m in (list(models.items())[r % len(models):] + list(models.items())[:r % len(models)]):
                torch.cuda.synchronize(); t = time.perf_counter()
                for _ in range(n): m(x)
                torch.cuda.synchronize(); res[k].append(n * 128 / (time.perf_counter() - t))
    return {k: round(sorted(v)[len(v)//2]) for k, v in res.items()}
def convs(m):
    return [mm for mm in m.modules() if isinstance(mm, torch.nn.Conv2d)]
for arch in ['B2', 'B3', 'A0']:
    o = build_model(arch).model.eval(); reparameterize(o); ours = o.backbone.to(dev)
    t = reparameterize_model(timm.create_model('repvgg_' + arch.lower(), pretrained=False).eval()).to(dev)
    timm_bb = torch.nn.Sequential(t.stem, t.stages)
    ours_tw = copy.deepcopy(ours)
    timm_ow = copy.deepcopy(timm_bb)
    with torch.no_grad():
        for a, b in zip(convs(ours_tw), convs(timm_bb)):
            a.weight.copy_(b.weight); a.bias.copy_(b.bias)
        for a, b in zip(convs(timm_ow), convs(ours)):
            a.weight.copy_(b.weight); a.bias.copy_(b.bias)
    print(arch, bench(dict(ours=ours, timm=timm_bb, ours_timmweights=ours_tw, timm_ourweights=timm_ow)), flush=True)

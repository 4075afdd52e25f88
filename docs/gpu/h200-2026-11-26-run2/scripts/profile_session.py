import torch, timm, time
from timm.utils import reparameterize_model
from projects.benchmark.models import build_model, TensorForward
from mmrepvgg.models import reparameterize
torch.backends.cudnn.benchmark = True
torch.backends.cudnn.allow_tf32 = True
dev = 'cuda'
x = torch.randn(128, 3, 224, 224, device=dev)
def ours(arch):
    m = TensorForward(build_model(arch).model).eval()
    return reparameterize(m).to(dev)
def tm(arch):
    return reparameterize_model(timm.create_model('repvgg_' + arch.lower(), pretrained=False).eval()).to(dev)
def ours_bb(arch):
    m = build_model(arch).model.eval(); reparameterize(m); return m.backbone.to(dev)
def tm_bb(arch):
    m = tm(arch); return torch.nn.Sequential(m.stem, m.stages)
def bench(models, n=30, rounds=5):
    res = {k: [] for k in models}
    with torch.no_grad():
        for k, m in models.items():
            for _ in range(10): m(x)
        for r in range(rounds):
            for k, m in models.items():
                torch.cuda.synchronize(); t = time.perf_counter()
                for _ in range(n): m(x)
                torch.cuda.synchronize(); res[k].append(n * 128 / (time.perf_counter() - t))
    return {k: round(sorted(v)[len(v)//2]) for k, v in res.items()}
for arch in ['B2', 'A0']:
    models = dict(ours=ours(arch), timm=tm(arch), ours_bb=ours_bb(arch), timm_bb=tm_bb(arch))
    print(arch, bench(models), flush=True)
    from torch.profiler import profile, ProfilerActivity
    for k in ('ours_bb', 'timm_bb'):
        with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(3): models[k](x)
            torch.cuda.synchronize()
        print(k, flush=True)
        print(p.key_averages().table(sort_by='cuda_time_total', row_limit=12, max_name_column_width=70), flush=True)
    print([ (n, tuple(mm.weight.shape), mm.weight.stride(), mm.weight.data_ptr() % 1024) for n, mm in models['ours_bb'].named_modules() if isinstance(mm, torch.nn.Conv2d)][:3])
    print([ (n, tuple(mm.weight.shape), mm.weight.stride(), mm.weight.data_ptr() % 1024) for n, mm in models['timm_bb'].named_modules() if isinstance(mm, torch.nn.Conv2d)][:3])

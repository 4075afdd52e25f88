"""The benchmark runs end to end on a CPU (2 timed iterations); no timing assertions."""
import copy
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from projects.benchmark.benchmark import BenchmarkSettings, compute_ratios, run_benchmark
from projects.benchmark.device import backend_supported
from projects.benchmark.metafile import load_metafile
from projects.benchmark.report import benchmark_markdown
from tests.helpers import METAFILE, one_error_line, run_script
from tests.helpers import ROOT as HELPERS_ROOT

ROOT = str(HELPERS_ROOT)


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def report(one_thread):
    return run_benchmark(['A0', 'ResNet-18'], BenchmarkSettings(
        batch=1, shape=(32, 32), warmup=1, iters=2, memory=True))


def test_runs_every_variant_with_memory(report):
    got = [(r['model'], r['variant']) for r in report['results']]
    assert got == [('RepVGG-A0', 'train'), ('RepVGG-A0', 'deploy'), ('ResNet-18', 'fused')]
    for r in report['results']:
        assert r['examples_per_s'] > 0 and len(r['rounds']) == 1
        assert r['peak_memory_mb'] > 0
    assert report['protocol']['batch'] == 1 and not report['protocol']['paper_protocol']
    assert report['device_info']['torch'] and report['device_info']['device'] == 'cpu'
    ratios = report['ratios']
    assert ratios['reference'] == 'RepVGG-A0/deploy'
    assert ratios['vs_reference']['RepVGG-A0/deploy'] == 1
    assert set(ratios['deploy_vs_train']) == {'RepVGG-A0'}
    # Fig. 3: the multi-branch model needs more memory than the plain one
    assert ratios['memory_train_vs_deploy']['RepVGG-A0'] > 1
    json.dumps(report)
    assert 'RepVGG-A0' in benchmark_markdown(report)


def test_ratios_from_one_run():
    results = [dict(model='a', variant='train', examples_per_s=10.0),
               dict(model='a', variant='deploy', examples_per_s=20.0),
               dict(model='b', variant='fused', examples_per_s=5.0)]
    ratios = compute_ratios(results)
    assert ratios['reference'] == 'a/deploy'
    assert ratios['vs_reference'] == {'a/train': 0.5, 'a/deploy': 1.0, 'b/fused': 0.25}
    assert ratios['deploy_vs_train'] == {'a': 2.0}


def test_plot_from_the_json(report, tmp_path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from projects.benchmark.plot import plot_speed_accuracy
    mine = plt.figure()  # a caller's figure: the plot closes only its own
    before = plt.get_fignums()
    try:
        points = plot_speed_accuracy(report, str(tmp_path / 'plot.png'), METAFILE, table=4)
        assert plt.get_fignums() == before
        with pytest.raises(ValueError, match='give a figure file'):
            plot_speed_accuracy(report, str(tmp_path / 'plot.txt'), METAFILE)
        assert plt.get_fignums() == before
    finally:
        plt.close(mine)
    assert {p['model'] for p in points} == {'RepVGG-A0', 'ResNet-18'}
    assert {p['accuracy'] for p in points} == {72.41, 71.16}
    assert (tmp_path / 'plot.png').stat().st_size > 0


def test_cli_tools(tmp_path, monkeypatch, capsys):
    out = tmp_path / 'bench.json'
    _cli(monkeypatch, 'A0', '--batch', '1', '--shape', '32', '32', '--warmup', '1', '--iters',
         '2', '--variants', 'deploy', '--device', 'cpu', '--out', str(out))
    assert json.loads(out.read_text())['results'][0]['variant'] == 'deploy'

    def plot(*argv: str) -> int:
        return run_script(monkeypatch, 'tools/plot_speed_accuracy.py', *argv)

    png = tmp_path / 'p.png'
    assert plot(str(out), '--out', str(png)) == 0
    assert png.stat().st_size > 0 and 'saved' in capsys.readouterr().out
    before = png.read_bytes()
    assert plot(str(out), '--out', str(png), '--title', 'other') == 1  # never overwritten
    assert 'exists; pass --force' in one_error_line(capsys) and png.read_bytes() == before
    assert plot(str(out), '--out', str(png), '--title', 'other', '--force') == 0
    assert png.read_bytes() != before
    assert plot(str(out), '--out', str(tmp_path / 'p.json')) == 1  # not a figure format
    assert 'give a figure file' in one_error_line(capsys)
    assert plot(str(tmp_path / 'missing.json'), '--out', str(tmp_path / 'q.png')) == 1
    assert 'missing.json' in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bench.json', 'p.png']


def test_reduced_precision_is_probed():
    ok, reason = backend_supported('fp32', 'cpu')
    assert ok and reason == ''
    ok, reason = backend_supported('bf16', 'cpu')
    assert isinstance(ok, bool) and (ok or reason)


# ---------------------------------------------------------------- honest protocol

def _proto(**kw):
    base = dict(task='cls', batch=128, shape=[224, 224], warmup=50, iters=50, rounds=3,
                dtype='fp32', backend='eager', tf32_conv=False, tf32_matmul=False)
    base.update(kw)
    return base


def test_paper_protocol_flag_exactly_for_the_papers_protocol():
    from projects.benchmark.report import is_paper_protocol, protocol_differences
    assert is_paper_protocol(_proto())
    assert is_paper_protocol(_proto(task='seg', batch=16, shape=[713, 713], rounds=1))
    for changed in (dict(batch=64), dict(shape=[256, 256]), dict(warmup=20), dict(iters=10),
                    dict(dtype='tf32', tf32_conv=True, tf32_matmul=True), dict(dtype='bf16'),
                    dict(tf32_conv=True), dict(tf32_matmul=True), dict(backend='compile'),
                    dict(task='seg'), dict(batch=16, shape=[224, 224], task='seg')):
        assert not is_paper_protocol(_proto(**changed)), changed
        assert protocol_differences(_proto(**changed))
    old = _proto()
    del old['tf32_conv'], old['tf32_matmul']  # a json of an older version
    assert protocol_differences(old) == ['TF32 state not recorded']
    assert protocol_differences(_proto(tf32_conv=None)) == ['TF32 state not recorded']


def test_paper_protocol_flag_computed_by_the_run(monkeypatch):
    """The flag is computed on the finished protocol (it used to be always False)."""
    from projects.benchmark import benchmark as bm
    tiny = dict(batch=1, shape=(32, 32), warmup=1, iters=1)
    monkeypatch.setitem(bm.PAPER_PROTOCOL, 'cls', tiny)
    report = bm.run_benchmark(['A0'], bm.BenchmarkSettings(variants=('deploy', ), flops=False))
    assert report['protocol']['paper_protocol'] is True
    assert "(the paper's protocol)" in benchmark_markdown(report)
    report = bm.run_benchmark(['A0'], bm.BenchmarkSettings(
        iters=2, variants=('deploy', ), flops=False))
    assert report['protocol']['paper_protocol'] is False
    assert "differs from the paper's protocol: 1 + 2 batches" in benchmark_markdown(report)


def test_precision_is_set_recorded_and_restored():
    from projects.benchmark.device import float32_precision, precision_label, tf32_state
    before = tf32_state()
    with float32_precision(False) as state:
        assert state['cudnn_conv_tf32'] is False and state['matmul_tf32'] is False
        assert precision_label('fp32', state, 'cuda').startswith('fp32 (strict IEEE')
        assert 'TF32 off' in precision_label('bf16', state, 'cuda')
    with float32_precision(True) as state:
        assert state['cudnn_conv_tf32'] is True and state['matmul_tf32'] is True
        assert precision_label('tf32', state, 'cuda').startswith('tf32 (fp32 tensors, TF32 on')
        # never "fp32" for TF32 convs
        assert precision_label('fp32', state, 'cuda') == (
            'fp32 (TF32 on for cuDNN conv, on for matmul)')
    assert tf32_state() == before
    assert precision_label('fp32', before, 'cpu') == 'fp32 (CPU: no TF32)'


def test_precision_with_the_legacy_allow_tf32_api():
    """torch without the fp32_precision API: the allow_tf32 flags are set and restored."""
    code = '\n'.join([
        'from projects.benchmark import device as p',
        'p._new_api = lambda: False',
        'before = p.tf32_state()',
        'assert before["api"] == "allow_tf32", before',
        'with p.float32_precision(False) as s:',
        '    assert (s["cudnn_allow_tf32"], s["cuda_matmul_allow_tf32"]) == (False, False), s',
        'with p.float32_precision(True) as s:',
        '    assert (s["cudnn_conv_tf32"], s["matmul_tf32"]) == (True, True), s',
        'assert p.tf32_state() == before',
    ])
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_tf32_is_refused_on_the_cpu():
    ok, reason = backend_supported('tf32', 'cpu')
    assert not ok and 'CUDA' in reason
    with pytest.raises(ValueError, match='tf32'):
        run_benchmark(['A0'], BenchmarkSettings(dtype='tf32', batch=1, shape=(32, 32)))


def test_a_device_that_is_not_there_is_refused_by_every_entry_point(monkeypatch):
    """Library callers get the same check as the tools: a ValueError before any build."""
    from projects.benchmark.device import resolve_device
    from projects.exactness.exactness import checkpoint_precision_errors, precision_errors
    from projects.weight_swap.weight_swap import weight_swap_benchmark
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert resolve_device(None) == torch.device('cpu')
    assert resolve_device('cpu') == torch.device('cpu')
    for call in (lambda: run_benchmark(['A0'], BenchmarkSettings(device='cuda')),
                 lambda: weight_swap_benchmark(['A0'], settings=BenchmarkSettings(device='cuda')),
                 lambda: precision_errors('A0', device='cuda'),
                 lambda: checkpoint_precision_errors('no.py', 'no.pth', device='cuda'),
                 lambda: backend_supported('fp32', 'cuda')):
        with pytest.raises(ValueError, match="^device cuda: CUDA is not available"):
            call()
    with pytest.raises(ValueError, match="^--device gpu0: Invalid device string"):
        resolve_device('gpu0', '--device')


def test_cudnn_benchmark_context_restores():
    from projects.benchmark.device import cudnn_benchmark
    before = torch.backends.cudnn.benchmark
    with cudnn_benchmark(not before):
        assert torch.backends.cudnn.benchmark is (not before)
    assert torch.backends.cudnn.benchmark is before


def test_achieved_tflops_and_fraction_of_peak(report):
    from projects.benchmark.complexity import count_complexity
    from projects.benchmark.models import build_from_spec as build_model
    from projects.benchmark.models import example_input
    from mmrepvgg.deploy.build import TensorForward
    r = next(r for r in report['results'] if r['variant'] == 'train')
    macs = count_complexity(TensorForward(build_model('A0').model), example_input((32, 32))).flops
    assert r['gmacs_per_example'] == pytest.approx(macs / 1e9)
    assert r['achieved_tflops'] == pytest.approx(2 * macs * r['examples_per_s'] / 1e12)
    given = run_benchmark(['A0'], BenchmarkSettings(batch=1, shape=(32, 32), warmup=1, iters=1,
                          variants=('deploy', ), peak_tflops=0.5))
    res = given['results'][0]
    assert res['fraction_of_peak'] == pytest.approx(res['achieved_tflops'] / 0.5)
    assert given['peak'] == dict(tflops=0.5, source='given (--peak-tflops)', dtype='fp32')
    assert '% of peak' in benchmark_markdown(given)


def test_measured_matmul_peak():
    from projects.benchmark.device import measure_matmul_peak
    peak = measure_matmul_peak('cpu', 'fp32', size=128, iters=2, warmup=1)
    assert peak['tflops'] > 0 and peak['size'] == 128


def test_interleaved_order_rotates():
    from projects.benchmark.device import device_sync
    from mmrepvgg.utils.timing import time_interleaved
    calls, syncs = [], []
    runs = [(f'm{i}', lambda i=i: calls.append(i)) for i in range(3)]
    rates = time_interleaved(runs, iters=2, rounds=3, warmup=0, examples=4,
                             sync=lambda: syncs.append(1), log=None)
    assert calls[:3] == [0, 1, 2]  # at least one warm-up call each
    assert calls[3:] == [0, 0, 1, 1, 2, 2, 1, 1, 2, 2, 0, 0, 2, 2, 0, 0, 1, 1]
    assert len(syncs) == 2 * (3 + 3 * 3)  # before and after every timed stretch
    assert len(rates) == 3 and all(len(r) == 3 and min(r) > 0 for r in rates)
    calls.clear()  # a mapping: its order; warm-up as asked
    time_interleaved({'b': lambda: calls.append('b'), 'a': lambda: calls.append('a')},
                     iters=1, rounds=2, warmup=2)
    assert calls == ['b', 'b', 'a', 'a', 'b', 'a', 'a', 'b']
    assert device_sync('cpu') is None and callable(device_sync(torch.device('cuda', 0)))


def test_the_benchmark_and_the_weight_swap_time_with_the_one_loop(monkeypatch):
    """run_benchmark and weight_swap_benchmark take their speeds from time_interleaved."""
    import statistics

    from projects.benchmark import benchmark as bm
    from projects.weight_swap import weight_swap as ws
    seen = []

    def fake(runs, iters, rounds, warmup, examples, sync, log='benchmark'):
        runs = list(runs.items() if isinstance(runs, dict) else runs)
        seen.append(([label for label, _ in runs], iters, rounds, warmup, examples, sync))
        return [[10.0 * (i + 1), 30.0 * (i + 1), 20.0 * (i + 1)] for i in range(len(runs))]

    monkeypatch.setattr(bm, 'time_interleaved', fake)
    monkeypatch.setattr(ws, 'time_interleaved', fake)
    report = bm.run_benchmark(['A0'], bm.BenchmarkSettings(
        batch=2, shape=(32, 32), warmup=0, iters=5, rounds=3, flops=False))
    assert seen[-1] == (['RepVGG-A0 [train]', 'RepVGG-A0 [deploy]'], 5, 3, 0, 2, None)
    train, deploy = report['results']
    assert (train['examples_per_s'], deploy['examples_per_s']) == (20.0, 40.0)
    assert train['rounds'] == [10.0, 30.0, 20.0] and deploy['best_examples_per_s'] == 60.0
    swap = ws.weight_swap_benchmark(['A0'], settings=BenchmarkSettings(
        batch=1, shape=(32, 32), warmup=1, iters=2, rounds=3, num_classes=10))
    assert seen[-1][0] == ['ours', 'timm', 'ours, timm weights', 'timm, our weights']
    (arch, ) = swap['archs']
    assert arch['speeds']['timm'] == 40.0 and arch['best']['timm, our weights'] == 120.0
    assert arch['ratios']['ours / timm, own weights'] == statistics.median([0.5] * 3)


# ---------------------------------------------------------------- peers

def test_peer_specs():
    from projects.benchmark.peers import parse_peer
    from projects.benchmark.variants import with_peers
    assert parse_peer('timm:repvgg_b1g4') == ('timm', 'B1g4')
    assert parse_peer('mmpretrain:RepVGG-B2g2') == ('mmpretrain', 'B2g2')
    assert parse_peer('A0') is None and parse_peer('configs/x.py') is None
    for bad in ('tvm:A0', 'timm:B1g2', 'timm:Z1', 'mmpretrain:D2se'):
        with pytest.raises(KeyError):
            parse_peer(bad)
    assert with_peers(['A0', 'ResNet-18', 'B1g2']) == [
        'A0', 'timm:A0', 'mmpretrain:A0', 'ResNet-18', 'B1g2', 'mmpretrain:B1g2']
    assert with_peers(['A0'], ['timm']) == ['A0', 'timm:A0']
    # mmpretrain's deployed D2se drops its SE layer: not a peer (see test_peer_d2se_...)
    assert with_peers(['D2se']) == ['D2se', 'timm:D2se']


def test_peers_in_the_same_run():
    from projects.benchmark.variants import with_peers
    report = run_benchmark(with_peers(['A0']), BenchmarkSettings(
        batch=1, shape=(32, 32), warmup=1, iters=1, rounds=2, variants=('deploy', ), memory=True))
    got = {(r['model'], r['source']): r for r in report['results']}
    assert set(got) == {('RepVGG-A0', 'mmrepvgg'), ('RepVGG-A0 [timm]', 'timm'),
                        ('RepVGG-A0 [mmpretrain]', 'mmpretrain')}
    ours = got['RepVGG-A0', 'mmrepvgg']
    for r in got.values():
        assert r['variant'] == 'deploy' and r['arch'] == 'A0' and len(r['rounds']) == 2
        # the same deployed architecture: same parameters, MACs and feature maps
        assert r['params_m'] == ours['params_m']
        assert r['gmacs_per_example'] == pytest.approx(ours['gmacs_per_example'])
    peers = report['ratios']['ours_vs_peers']['RepVGG-A0']
    assert set(peers) == {'timm', 'mmpretrain'}
    paired = [a / b for a, b in zip(ours['rounds'], got['RepVGG-A0 [timm]', 'timm']['rounds'])]
    assert peers['timm'] == pytest.approx(sorted(paired)[0] / 2 + sorted(paired)[1] / 2)
    assert report['ratios']['reference'] == 'RepVGG-A0/deploy'
    table = benchmark_markdown(report)
    assert 'ours / timm' in table and 'ours / mmpretrain' in table
    # by default every peer runs our weights, checked on the CPU
    assert report['protocol']['peer_weights'] == 'shared'
    for source in ('timm', 'mmpretrain'):
        r = got[f'RepVGG-A0 [{source}]', source]
        assert r['weights'] == 'ours' and 0 <= r['weights_max_rel_diff'] <= 1e-5
    assert 'weights' not in ours
    assert 'Same weights: ours copied into each peer; outputs checked' in table


def _deployed_pair(arch, spec, num_classes=10):
    from projects.benchmark.models import build_from_spec as build_model
    from projects.benchmark.peers import build_peer
    from mmrepvgg.deploy.build import TensorForward
    from mmrepvgg.models import reparameterize
    ours = TensorForward(reparameterize(build_model(arch, num_classes=num_classes).model)).eval()
    return ours, TensorForward(build_peer(spec, num_classes).model).eval()


@pytest.mark.parametrize('spec,tensors', [('timm:A0', 46), ('mmpretrain:A0', 46),
                                          ('mmpretrain:B1g4', 58)])
def test_copy_weights_makes_the_outputs_equal(spec, tensors):
    from projects.benchmark.peers import check_same_outputs, copy_weights
    ours, peer = _deployed_pair(spec.split(':')[1], spec)
    with pytest.raises(ValueError, match='differs from ours'):  # own random weights
        check_same_outputs(ours, peer, (32, 32))
    assert copy_weights(ours, peer, 'mmrepvgg', spec.split(':')[0]) == tensors  # 2 a conv
    assert check_same_outputs(ours, peer, (32, 32)) <= 1e-5
    # the copy is a copy: moving or changing the peer leaves ours alone
    ours_conv = ours.model.backbone.stem.branch_reparam.weight
    assert not any(p.data_ptr() == ours_conv.data_ptr() for p in peer.parameters())


def test_check_same_outputs_refuses_other_shapes_and_non_finite_outputs():
    from torch import nn

    from projects.benchmark.peers import check_same_outputs
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    assert check_same_outputs(ours, ours, (8, 8)) == 0
    narrow = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match=r'^peer vs ours: .*\(2, 4\) of ours, \(2, 2\) of peer'):
        check_same_outputs(ours, narrow, (8, 8))
    broken = copy.deepcopy(ours)
    with torch.no_grad():
        broken[0].bias[0] = float('nan')
    with pytest.raises(ValueError, match='values of broken are NaN or Inf: its weights'):
        check_same_outputs(ours, broken, (8, 8), what='broken')


def test_copy_weights_checks_keys_and_shapes_and_copies_nothing_on_error():
    from projects.benchmark.peers import copy_weights
    ours, _ = _deployed_pair('A0', 'timm:A0')
    _, wider = _deployed_pair('A0', 'timm:A1')
    _, deeper = _deployed_pair('A0', 'timm:B0')
    before = [p.clone() for p in wider.parameters()]
    with pytest.raises(ValueError, match=r'backbone\.stem\.branch_reparam\.weight is '
                       r'\(48, 3, 3, 3\) in mmrepvgg, \(64, 3, 3, 3\) in timm'):
        copy_weights(ours, wider, 'mmrepvgg', 'timm')
    assert all(torch.equal(a, b) for a, b in zip(before, wider.parameters()))
    with pytest.raises(ValueError, match='0 key.s. only in mmrepvgg .* only in timm'):
        copy_weights(ours, deeper, 'mmrepvgg', 'timm')
    with pytest.raises(ValueError, match="unknown weight layout 'tvm': use one of mmrepvgg, "
                       'official, mmpretrain, timm'):  # the key maps' layouts
        copy_weights(ours, wider, 'mmrepvgg', 'tvm')
    with pytest.raises(ValueError, match='only in official'):  # a layout, but not timm's
        copy_weights(ours, wider, 'mmrepvgg', 'official')
    assert all(torch.equal(a, b) for a, b in zip(before, wider.parameters()))


def _swap_two_convs(src, dst, src_layout, dst_layout):
    """A wrong copy: every tensor copied, but two same-shape convs on each other's layer."""
    from projects.benchmark.peers import copy_weights
    n = copy_weights(src, dst, src_layout, dst_layout)
    a, b = dst.model.stages[0][0].reparam_conv, dst.model.stages[0][1].reparam_conv
    with torch.no_grad():
        wa = a.weight.clone()
        a.weight.copy_(b.weight)
        b.weight.copy_(wa)
    return n


@pytest.mark.parametrize('copy', ['none', 'swapped'])
def test_a_wrong_copy_stops_the_benchmark(monkeypatch, copy):
    """The output check, not the copy, is what guarantees equal weights: it catches a copy
    that leaves a peer's own weights or puts ours on the wrong layers."""
    from projects.benchmark import variants
    monkeypatch.setattr(variants, 'copy_weights',
                        (lambda *args: 0) if copy == 'none' else _swap_two_convs)
    with pytest.raises(ValueError, match=r'RepVGG-A0 \[timm\]: with our weights its output '
                       'differs from ours by'):
        run_benchmark(['A0', 'timm:A0'], BenchmarkSettings(
            batch=1, shape=(32, 32), warmup=1, iters=1, variants=('deploy', ), flops=False))


def test_peers_with_their_own_weights_and_alone():
    """--peer-weights own: nothing copied, the report says so; a peer without ours in the
    run gets the weights of our model built for it."""
    report = run_benchmark(['A0', 'timm:A0'], BenchmarkSettings(
        batch=1, shape=(32, 32), warmup=1, iters=1, variants=('deploy', ), flops=False,
        peer_weights='own'))
    assert report['protocol']['peer_weights'] == 'own'
    peer = report['results'][1]
    assert peer['weights'] == 'own' and 'weights_max_rel_diff' not in peer
    assert 'Own weights: each library' in benchmark_markdown(report)
    alone = run_benchmark(['timm:A0'], BenchmarkSettings(
        batch=1, shape=(32, 32), warmup=1, iters=1, flops=False))
    assert [r['model'] for r in alone['results']] == ['RepVGG-A0 [timm]']
    assert alone['results'][0]['weights'] == 'ours'
    with pytest.raises(ValueError, match='peer_weights'):
        run_benchmark(['timm:A0'], BenchmarkSettings(peer_weights='theirs'))
    old = json.loads(json.dumps(report))  # a report from before the weights were shared
    del old['protocol']['peer_weights']
    assert 'Peer weights not recorded' in benchmark_markdown(old)


def test_cli_peer_weights(monkeypatch, tmp_path):
    out = tmp_path / 'p.json'
    _cli(monkeypatch, 'A0', '--peers', 'timm', '--peer-weights', 'own', '--variants', 'deploy',
         '--batch', '1', '--shape', '32', '32', '--warmup', '1', '--iters', '1', '--device',
         'cpu', '--no-flops', '--out', str(out))
    saved = json.loads(out.read_text())
    assert saved['protocol']['peer_weights'] == 'own' and '--peer-weights own' in saved['command']
    assert _cli(monkeypatch, 'A0', '--peers', '--peer-weights', 'theirs', code=None) == 2


def test_peer_d2se_timm_matches_and_mmpretrain_is_another_network():
    """timm's deployed D2se is ours (SE keys mapped); mmpretrain's drops the SE layer once
    deployed, which the output check catches (hence no mmpretrain:D2se peer)."""
    from projects.benchmark.models import classifier_cfg
    from projects.benchmark.peers import check_same_outputs, copy_weights
    from mmrepvgg.deploy.build import build_model_cfg
    from mmrepvgg.deploy.build import TensorForward
    ours, timm_peer = _deployed_pair('D2se', 'timm:D2se')
    assert copy_weights(ours, timm_peer, 'mmrepvgg', 'timm') == 290
    assert check_same_outputs(ours, timm_peer, (32, 32)) <= 1e-5
    del timm_peer
    mmpre = build_model_cfg(classifier_cfg(dict(type='RepVGG', arch='D2se'), 2560, 10),
                            'mmpretrain').eval()
    mmpre.backbone.switch_to_deploy()
    mmpre = TensorForward(mmpre)
    assert copy_weights(ours, mmpre, 'mmrepvgg', 'mmpretrain') == 290
    with pytest.raises(ValueError, match='differs from ours'):
        check_same_outputs(ours, mmpre, (32, 32))


def test_peer_outputs_are_deployed_plain_convs():
    """A peer is timed deployed: no multi-branch block is left in it."""
    from projects.benchmark.peers import build_peer
    for spec in ('timm:A0', 'mmpretrain:A0'):
        model = build_peer(spec).model
        assert not model.training
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 22 and all(c.kernel_size == (3, 3) for c in convs)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


# ---------------------------------------------------------------- fold time, CLI, render

def test_fold_time():
    from projects.benchmark.benchmark import fold_time
    from projects.benchmark.report import fold_time_line
    res = fold_time('A0', repeats=2)
    assert res['blocks'] == 22 and len(res['seconds']) == 2 and res['median_s'] > 0
    assert 'fold RepVGG-A0 backbone (22 blocks): median' in fold_time_line(res)


def _cli(monkeypatch, *argv, code: int | None = 0) -> int:
    """Run tools/benchmark.py with ``argv``; its exit status (checked to be ``code`` unless
    None)."""
    status = run_script(monkeypatch, 'tools/benchmark.py', *argv)
    assert code is None or status == code
    return status


def test_cli_unknown_model_is_one_line(monkeypatch, capsys):
    _cli(monkeypatch, 'A0', 'Foo-99', '--device', 'cpu', code=1)
    assert one_error_line(capsys).startswith("error: Unknown model 'Foo-99'")
    _cli(monkeypatch, 'timm:B1g2', '--device', 'cpu', code=1)
    assert 'timm has no RepVGG-B1g2' in one_error_line(capsys)
    for bad in (['--rounds', '0'], ['--batch', '-1'], ['--iters', 'x']):  # argparse: status 2
        assert _cli(monkeypatch, 'A0', *bad, code=None) == 2


def test_cli_outputs_checked_before_the_run(monkeypatch, tmp_path, capsys):
    from projects.benchmark import benchmark as bm

    def never(*args, **kwargs):
        raise AssertionError('the benchmark ran before its outputs were checked')

    monkeypatch.setattr(bm, 'run_benchmark', never)
    existing = tmp_path / 'old.json'
    existing.write_text('{}')
    _cli(monkeypatch, 'A0', '--out', str(existing), code=1)
    assert 'exists; pass --force' in one_error_line(capsys)
    assert existing.read_text() == '{}'
    _cli(monkeypatch, 'A0', '--out', str(tmp_path / 'a'), '--markdown', str(tmp_path / 'a'),
         code=1)  # one would overwrite the other
    assert 'are the same file' in one_error_line(capsys)
    blocker = tmp_path / 'file'
    blocker.write_text('')
    _cli(monkeypatch, 'A0', '--markdown', str(blocker / 'sub' / 'b.md'), code=1)
    assert 'is a file, not a directory' in one_error_line(capsys)
    monkeypatch.undo()
    nested = tmp_path / 'new' / 'dir' / 'b.json'
    _cli(monkeypatch, 'A0', '--batch', '1', '--shape', '32', '32', '--warmup', '1', '--iters',
         '1', '--variants', 'deploy', '--device', 'cpu', '--out', str(nested), '--no-flops')
    assert json.loads(nested.read_text())['results'][0]['model'] == 'RepVGG-A0'


def test_cli_render_fold_time_and_peak(monkeypatch, tmp_path, capsys, report):
    saved = tmp_path / 'r.json'
    saved.write_text(json.dumps(dict(report, command='python tools/benchmark.py A0 ...')))
    _cli(monkeypatch, '--render', str(saved), '--markdown', str(tmp_path / 'r.md'))
    assert capsys.readouterr().out.strip() == benchmark_markdown(report, load_metafile(METAFILE))
    assert (tmp_path / 'r.md').read_text().startswith('Generated by `python tools/benchmark.py')
    before = saved.read_text()  # the rendered json is an input: never its own markdown
    _cli(monkeypatch, '--render', str(saved), '--markdown', str(saved), '--force', code=1)
    assert 'is the input' in one_error_line(capsys) and saved.read_text() == before
    _cli(monkeypatch, '--fold-time', 'A0', '--fold-repeats', '1', '--threads', '1')
    assert 'fold RepVGG-A0 backbone (22 blocks)' in capsys.readouterr().out
    _cli(monkeypatch, '--measure-peak', '--device', 'cpu', '--out', str(tmp_path / 'p.json'))
    peak = json.loads((tmp_path / 'p.json').read_text())['peak']
    assert peak['tflops'] > 0 and peak['source'].startswith('measured')


#: The json in docs/ that other tools wrote (each rendered by its own test).
OTHER_REPORTS = {'docs/qa_digits_cpu.json'}  # tests/projects/test_qa_compare.py


@pytest.mark.parametrize('path', sorted(p for p in glob.glob(osp.join(ROOT, 'docs/**/*.json'),
                                                             recursive=True)
                                        if osp.relpath(p, ROOT) not in OTHER_REPORTS),
                         ids=lambda path: osp.relpath(path, ROOT))
def test_saved_reports_render(path):
    """Every benchmark json in docs/ renders (the docs' tables come from these)."""
    with open(path) as f:
        saved = json.load(f)
    assert isinstance(saved, dict) and ('results' in saved or 'fold_time' in saved), (
        f'{path} is not a tools/benchmark.py report (no "results"): render it in its own test')
    text = benchmark_markdown(saved)
    if 'fold_time' in saved:  # --fold-time: a line per arch, as the tool printed it
        lines = text.splitlines()
        assert len(lines) == len(saved['fold_time'])
        for line, r in zip(lines, saved['fold_time']):
            assert line.startswith(f"fold RepVGG-{r['arch']} backbone")
            assert f"median {r['median_s']:.3f} s" in line
        return
    assert text.startswith('Device: ')
    if saved['results']:
        assert '\nProtocol: batch ' in text
    else:  # a matmul peak alone (--measure-peak without models)
        assert '\nPeak: ' in text and saved['peak']['tflops'] > 0


def test_paper_pairs_in_the_markdown(report):
    assert '1080Ti' not in benchmark_markdown(report)  # without the metafile: no paper rows
    text = benchmark_markdown(report, load_metafile(METAFILE))
    speed = {r['model']: r['examples_per_s'] for r in report['results'] if r['variant'] != 'train'}
    measured = speed['RepVGG-A0'] / speed['ResNet-18']
    assert f'| RepVGG-A0 / ResNet-18 | {measured:.2f}x | 1.33x |' in text  # 3256 / 2442


def test_update_marked_tables(tmp_path, report):
    from projects.benchmark.report import update_marked_tables
    (tmp_path / 'r.json').write_text(json.dumps(dict(report, command='python tools/x.py A0')))
    text = 'intro\n<!-- benchmark: r.json -->\nold table\n<!-- /benchmark -->\nend\n'
    new, paths = update_marked_tables(text, str(tmp_path))
    assert paths == ['r.json'] and 'old table' not in new
    assert new.startswith('intro\n<!-- benchmark: r.json -->\nGenerated by `python tools/x.py A0`')
    assert benchmark_markdown(report) in new and new.endswith('<!-- /benchmark -->\nend\n')
    assert update_marked_tables(new, str(tmp_path)) == (new, ['r.json'])  # idempotent
    with pytest.raises(FileNotFoundError):
        update_marked_tables('<!-- benchmark: nope.json -->\n<!-- /benchmark -->', str(tmp_path))


def test_docs_tables_are_renders_of_their_json():
    """docs/benchmark.md's marked tables are what `--update-docs` makes from the json files."""
    from projects.benchmark.report import update_marked_tables
    with open(osp.join(ROOT, 'docs', 'benchmark.md')) as f:
        text = f.read()
    new, paths = update_marked_tables(text, ROOT, load_metafile(METAFILE))
    assert 'docs/bench_cpu.json' in paths
    assert new == text, 'run: python tools/benchmark.py --update-docs docs/benchmark.md'


def test_qarepvgg_variants():
    from projects.benchmark.variants import prepare_variants
    qa = prepare_variants('QARepVGG-A0', ('train', 'deploy'), num_classes=10)
    plain = prepare_variants('A0', ('deploy', ), num_classes=10)
    assert [(v.model, v.variant) for v in qa] == [('QARepVGG-A0', 'train'),
                                                   ('QARepVGG-A0', 'deploy')]
    assert qa[1].params == plain[0].params and qa[0].params != qa[1].params


#: A segmentor tested at 128x256 (whole inference after a Resize to 256x128, w x h).
TINY_SEG = osp.join(ROOT, 'configs', 'demo', 'pspnet_repvgg-small_tiny-cityscapes.py')


@pytest.mark.parametrize('config,shape', [
    (TINY_SEG, (128, 256)),  # test pipeline's Resize scale (w, h), whole inference
    ('configs/pspnet_repvgg-b2_cityscapes.py', (713, 713)),  # the slide-inference crop
    ('configs/repvgg-a0_in1k.py', (224, 224)),  # the test pipeline's CenterCrop
    ('configs/demo/repvgg-small_digits.py', (224, 224)),  # nothing says: the deploy default
])
def test_the_test_size_of_a_config(config, shape):
    from mmengine.config import Config

    from projects.benchmark.models import config_test_shape
    assert config_test_shape(Config.fromfile(osp.join(ROOT, config))) == shape


def test_a_config_is_timed_at_its_own_test_size(monkeypatch, tmp_path):
    """A config is timed at the size it is tested at, not the paper's 713x713; --shape sets
    another (issue 22)."""
    argv = [TINY_SEG, '--batch', '1', '--warmup', '0', '--iters', '1', '--variants', 'deploy',
            '--no-flops', '--device', 'cpu']
    _cli(monkeypatch, *argv, '--out', str(tmp_path / 'own.json'))
    assert json.loads((tmp_path / 'own.json').read_text())['protocol']['shape'] == [128, 256]
    _cli(monkeypatch, *argv, '--shape', '64', '96', '--out', str(tmp_path / 'given.json'))
    assert json.loads((tmp_path / 'given.json').read_text())['protocol']['shape'] == [64, 96]


def test_configs_tested_at_two_sizes_need_a_shape():
    from projects.benchmark.benchmark import config_shape
    from projects.benchmark.variants import Variant
    one = Variant('a', 'deploy', 'repvgg', 'seg', torch.nn.Identity(), 0,
                  input_shape=(128, 256))
    assert config_shape([one, copy.copy(one)]) == (128, 256)
    assert config_shape([Variant('b', 'fused', 'baseline', 'cls', torch.nn.Identity(), 0)]) is None
    other = Variant('c', 'deploy', 'repvgg', 'seg', torch.nn.Identity(), 0,
                    input_shape=(713, 713))
    with pytest.raises(ValueError, match='tested at different sizes .*give one with --shape'):
        config_shape([one, other])

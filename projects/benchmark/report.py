"""Benchmark reports: the paper's protocol, markdown tables, json + markdown files, and the
docs' marked tables re-rendered from their json (``tools/benchmark.py --render`` /
``--update-docs``)."""
from __future__ import annotations

import json
import os.path as osp
import re
from typing import Mapping, Sequence

from mmrepvgg.utils.fileio import check_output_path, write_bytes_atomic, write_json_atomic

from .markdown import fmt
from .metafile import PaperModel, find_paper_model
from .peers import PEER_SOURCES, PEER_TOLERANCE

#: The paper's speed protocol per task: batch, (H, W), warm-up batches, timed batches.
PAPER_PROTOCOL = {'cls': dict(batch=128, shape=(224, 224), warmup=50, iters=50),
                  'seg': dict(batch=16, shape=(713, 713), warmup=50, iters=50)}


#: The speed comparisons the paper makes (faster model, slower model), deployed / fused
#: forms, with the paper's 1080Ti speeds taken from configs/metafile.yml (Tables 4 and 8).
PAPER_PAIRS = [('RepVGG-A0', 'ResNet-18'), ('RepVGG-B0', 'ResNet-34'),
               ('RepVGG-A2', 'ResNet-50'), ('RepVGG-B1g2', 'ResNet-152'),
               ('RepVGG-B2', 'ResNet-101'),
               ('pspnet_repvgg-b1g2-fast_cityscapes', 'pspnet_r50_cityscapes'),
               ('pspnet_repvgg-b2-fast_cityscapes', 'pspnet_r101_cityscapes'),
               ('pspnet_repvgg-b2_cityscapes', 'pspnet_repvgg-b2-fast_cityscapes')]


#: Paper Table 6: RepVGG-B0 with all branches, deployed vs before conversion (examples/s).
PAPER_B0_DEPLOY_VS_TRAIN = (1810, 1061)


def protocol_differences(proto: dict) -> list[str]:
    """How a protocol differs from the paper's (empty: it is the paper's protocol).

    The paper's protocol is batch 128 at 224x224 (classification) or batch 16 at 713x713
    (segmentation), 50 warm-up + 50 timed batches, strict fp32 (no TF32), eager PyTorch.
    More than one interleaved round of 50 timed batches does not change it.

    Args:
        proto: ``run_benchmark()['protocol']``.

    Returns:
        Short descriptions of every difference.
    """
    paper = PAPER_PROTOCOL.get(proto.get('task'))
    if paper is None:
        return [f"task {proto.get('task')!r}"]
    out = []
    if proto['batch'] != paper['batch']:
        out.append(f"batch {proto['batch']} (paper {paper['batch']})")
    if tuple(proto['shape']) != tuple(paper['shape']):
        out.append(f"{proto['shape'][0]}x{proto['shape'][1]} "
                   f"(paper {paper['shape'][0]}x{paper['shape'][1]})")
    if (proto['warmup'], proto['iters']) != (paper['warmup'], paper['iters']):
        out.append(f"{proto['warmup']} + {proto['iters']} batches "
                   f"(paper {paper['warmup']} + {paper['iters']})")
    if proto['dtype'] != 'fp32':
        out.append(f"{proto['dtype']} (paper strict fp32)")
    elif proto.get('tf32_conv') or proto.get('tf32_matmul'):
        out.append('TF32 on (paper strict fp32)')
    elif proto.get('tf32_conv') is None or proto.get('tf32_matmul') is None:
        out.append('TF32 state not recorded')
    if proto['backend'] != 'eager':
        out.append(f"{proto['backend']} (paper eager)")
    return out


def is_paper_protocol(proto: dict) -> bool:
    """True exactly for the paper's protocol (see :func:`protocol_differences`)."""
    return not protocol_differences(proto)


def device_line(info: dict, date: str | None = None) -> str:
    """One line naming the device, threads and library versions of a report."""
    line = (f"Device: {info.get('gpu') or info['cpu']} ({info['device']}, "
            f"{info['torch_threads']} threads), torch {info['torch']}")
    if info.get('cudnn'):
        line += f", CUDA {info.get('cuda')}, cuDNN {info['cudnn']}"
    if date:
        line += f', measured {date[:10]}'
    return line


def _protocol_line(proto: dict) -> str:
    precision = proto.get('precision') or f"{proto['dtype']} (TF32 state not recorded)"
    if proto.get('device') == 'cpu':
        autotune = ''
    elif 'cudnn_benchmark' in proto:
        autotune = f"cudnn.benchmark {'on' if proto['cudnn_benchmark'] else 'off'}, "
    else:
        autotune = 'cudnn.benchmark not recorded, '
    diffs = protocol_differences(proto)
    line = (f"Protocol: batch {proto['batch']} at {proto['shape'][0]}x{proto['shape'][1]}, "
            f"{precision}, {proto['backend']}, {autotune}{proto['warmup']} warm-up + "
            f"{proto['iters']} timed batches x {proto['rounds']} interleaved round(s), "
            'median round')
    if not diffs:
        return line + " (the paper's protocol)"
    return line + f" (differs from the paper's protocol: {'; '.join(diffs)})"


def result_key(result: Mapping) -> str:
    """``'model/variant'``, with ``'@backend'`` in a run of several backends."""
    key = f"{result['model']}/{result['variant']}"
    return f"{key}@{result['backend']}" if result.get('backend') else key


def backend_lines(report: dict) -> list[str]:
    """The backends-vs-first-backend table of a run of several backends (none otherwise)."""
    table = report['ratios'].get('backends') or {}
    if not table:
        return []
    first = next(iter(next(iter(table.values())).values()))['vs']
    others = list(dict.fromkeys(b for per in table.values() for b in per))
    int8 = {f"{r['model']}/{r['variant']}": r['onnxruntime'] for r in report['results']
            if (r.get('onnxruntime') or {}).get('integer_convs') is not None}
    head = ['Model', 'Variant'] + [f'{b} / {first} (median, min-max)' for b in others]
    if int8:
        head.append('int8: integer / float convs run')
    lines = ['', f'Speed of each backend over {first}, same variant, paired by round '
             '(> 1.00x: faster):', '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for k, per in table.items():
        model, variant = k.split('/', 1)
        cells = [model, variant]
        for b in others:
            r = per.get(b)
            cells.append('-' if r is None else
                         f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})")
        if int8:
            i = int8.get(k)
            cells.append('-' if i is None else f"{i['integer_convs']} / {i['float_convs']}")
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def benchmark_markdown(report: dict, paper: Mapping[str, PaperModel] | None = None) -> str:
    """The benchmark as markdown tables, with the device and protocol above them.

    Works on any saved report, also on json written by older versions (which did not record
    the TF32 state: the protocol line then says so), and on a ``--fold-time`` report (one
    :func:`fold_time_line` per arch).

    Args:
        report: A :func:`~projects.benchmark.benchmark.run_benchmark` result (or its json).
        paper: The loaded metafile (:func:`~projects.benchmark.metafile.load_metafile`): adds
            the paper's speed comparisons; None: left out.
    """
    if 'fold_time' in report and 'results' not in report:
        return '\n'.join(fold_time_line(r) for r in report['fold_time'])
    info, proto = report['device_info'], report['protocol']
    results = report['results']
    lines = [device_line(info, report.get('date'))]
    if results:
        lines.append(_protocol_line(proto))
    peak = report.get('peak')
    if peak:
        lines.append(f"Peak: {peak['tflops']:.3g} TFLOP/s ({peak['source']})")
    lines.append('')
    ratios = report['ratios']
    cols = _columns(results)
    lines += _results_table(results, ratios, cols)
    lines += _notes(cols)
    lines += _deploy_vs_train_lines(ratios, cols['old_cuda_mem'])
    lines += _peer_lines(proto, results, ratios)
    lines += backend_lines(report)
    if paper is not None:
        lines += _paper_pairs(results, ratios, paper)
    for s in report.get('skipped', []):
        lines.append(f"\nSkipped {s['model']} [{s['variant']}]: {s['reason']}")
    return '\n'.join(lines)


def _columns(results: list[dict]) -> dict[str, bool]:
    """Which optional columns the results fill."""
    has_mem = any('peak_memory_mb' in r for r in results)
    has_alloc = any('allocator_peak_mb' in r for r in results)
    return dict(mem=has_mem, alloc=has_alloc,
                flops=any('achieved_tflops' in r for r in results),
                peak=any('fraction_of_peak' in r for r in results),
                several=any(r.get('backend') for r in results),
                old_cuda_mem=has_mem and not has_alloc and any(
                    r.get('memory_method') == 'cuda.max_memory_allocated' for r in results))


def _results_table(results: list[dict], ratios: dict, cols: dict[str, bool]) -> list[str]:
    """The table of every timed form: params, speed, TFLOP/s, memory."""
    head = ['Model', 'Variant', *(['Backend'] if cols['several'] else []), 'Params (M)',
            'Examples/s (median)', 'Best round', f"Speed vs {ratios['reference']}"]
    if cols['flops']:
        head += ['GMACs/example', 'TFLOP/s (2 x MACs)']
    if cols['peak']:
        head.append('% of peak')
    if cols['mem']:
        head.append('Allocator peak (MB)' if cols['old_cuda_mem'] else 'Feature maps (MB)')
    if cols['alloc']:
        head.append('Allocator peak (MB)')
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)] if results else []
    for r in results:
        cells = [r['model'], r['variant'], *([r.get('backend', '')] if cols['several'] else []),
                 f"{r['params_m']:.2f}", f"{r['examples_per_s']:.2f}",
                 f"{r.get('best_examples_per_s', r['examples_per_s']):.2f}",
                 f"{ratios['vs_reference'][result_key(r)]:.2f}x"]
        if cols['flops']:
            cells += [fmt(r.get('gmacs_per_example'), '.2f'),
                      fmt(r.get('achieved_tflops'), '.3g')]
        if cols['peak']:
            frac = r.get('fraction_of_peak')
            cells.append('-' if frac is None else f'{100 * frac:.0f}%')
        if cols['mem']:
            mem = r.get('peak_memory_mb')
            cells.append('-' if mem is None else f'{mem:.1f} (batch {r["memory_batch"]})')
        if cols['alloc']:
            cells.append(fmt(r.get('allocator_peak_mb'), '.1f'))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def _notes(cols: dict[str, bool]) -> list[str]:
    """What the TFLOP/s and memory columns count."""
    lines = []
    if cols['flops']:
        lines += ['', 'GMACs/example: conv and FC multiply-adds per example '
                  '(`projects.benchmark.complexity`, the paper\'s FLOPs); TFLOP/s counts a '
                  'multiply-add as 2 operations, as a matmul peak does.']
    if cols['mem']:
        if cols['old_cuda_mem']:
            lines += ['', 'Memory: `torch.cuda.max_memory_allocated` during one forward (this '
                      'older report did not track feature maps; cuDNN workspace included).']
        else:
            lines += ['', "Feature maps: the largest total of tensor storages alive at once "
                      "during one forward (dispatch tracker; weights, input and library "
                      "workspace not counted): what the paper's Fig. 3 is about."]
        if cols['alloc']:
            lines[-1] += (' Allocator peak: `torch.cuda.max_memory_allocated` during the '
                          'forward minus what was allocated before it (cuDNN workspace '
                          'included).')
    return lines


def _deploy_vs_train_lines(ratios: dict, old_cuda_mem: bool) -> list[str]:
    """Each model deployed vs its training-time form: speed and memory ratios."""
    if not ratios['deploy_vs_train']:
        return []
    lines = ['', 'Same model, deployed (RepVGG: re-parameterized; baseline: conv-BN fused) '
             'vs training-time form:', '']
    mem_head = 'Allocator peak train/deploy' if old_cuda_mem else 'Feature maps train/deploy'
    row_head = ['Model', 'Speed-up', mem_head]
    if ratios.get('allocator_train_vs_deploy'):
        row_head.append('Allocator peak train/deploy')
    lines += ['| ' + ' | '.join(row_head) + ' |', '|' + '---|' * len(row_head)]
    for model, ratio in ratios['deploy_vs_train'].items():
        mem = ratios['memory_train_vs_deploy'].get(model)
        cells = [model, f'{ratio:.2f}x', '-' if mem is None else f'{mem:.2f}x']
        if ratios.get('allocator_train_vs_deploy'):
            cells.append(fmt(ratios['allocator_train_vs_deploy'].get(model), '.2f', 'x'))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def _peer_lines(proto: dict, results: list[dict], ratios: dict) -> list[str]:
    """Ours vs the peers of the same arch, deployed."""
    if not ratios.get('ours_vs_peers'):
        return []
    lines = ['', 'Ours vs peers, deployed, same input and precision (ratio: median over '
             'rounds of ours / peer in the same round; > 1.00x: ours is faster). '
             + _peer_weights_line(proto, results), '']
    sources = [s for s in PEER_SOURCES if any(s in v for v in ratios['ours_vs_peers'].values())]
    speeds = {(r.get('arch'), r.get('source')): r['examples_per_s'] for r in results
              if r['variant'] == 'deploy'}
    row_head = ['Arch', 'ours (examples/s)']
    for s in sources:
        row_head += [f'{s} (examples/s)', f'ours / {s}']
    lines += ['| ' + ' | '.join(row_head) + ' |', '|' + '---|' * len(row_head)]
    for model, peers in ratios['ours_vs_peers'].items():
        arch = model.replace('RepVGG-', '')
        cells = [model, fmt(speeds.get((arch, 'mmrepvgg')), '.2f')]
        for s in sources:
            cells += [fmt(speeds.get((arch, s)), '.2f'), fmt(peers.get(s), '.3f', 'x')]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def _peer_weights_line(proto: dict, results: list[dict]) -> str:
    """What weights the peers were timed with (a GPU's speed depends on the values)."""
    mode = proto.get('peer_weights')
    if mode == 'shared':
        diffs = [r['weights_max_rel_diff'] for r in results
                 if r.get('family') == 'peer' and r.get('weights_max_rel_diff') is not None]
        worst = f'max rel diff {max(diffs):.2g}' if diffs else 'max rel diff not recorded'
        return (f'Same weights: ours copied into each peer; outputs checked (fp32, CPU: '
                f'{worst}, allowed {PEER_TOLERANCE:g}).')
    if mode == 'own':
        return ("Own weights: each library's own random initialization (a GPU's speed "
                'depends on the weight values; `--peer-weights shared` times the same '
                'weights).')
    return ("Peer weights not recorded: this report is from before weights were shared, so "
            "each library ran its own random initialization (a GPU's speed depends on the "
            'weight values).')


def _paper_pairs(results: list[dict], ratios: dict,
                 paper: Mapping[str, PaperModel]) -> list[str]:
    """The paper's speed comparisons found in a report, measured vs the paper's 1080Ti."""
    first = next((r['backend'] for r in results if r.get('backend')), None)
    speed = {r['model']: r['examples_per_s'] for r in results
             if r['variant'] in ('deploy', 'fused') and r.get('family') != 'peer'
             and r.get('backend') == first}
    rows = []
    for fast, slow in PAPER_PAIRS:
        if fast in speed and slow in speed:
            pf, ps = find_paper_model(fast, paper), find_paper_model(slow, paper)
            key = 'Speed (examples/s, 1080Ti)'
            ref = (pf.paper[key] / ps.paper[key] if pf and ps and key in pf.paper
                   and key in ps.paper else None)
            rows.append(f'| {fast} / {slow} | {speed[fast] / speed[slow]:.2f}x | '
                        f"{fmt(ref, '.2f', 'x')} |")
    b0 = ratios.get('deploy_vs_train', {}).get('RepVGG-B0')
    if b0 is not None:
        rows.append(f'| RepVGG-B0 deployed / training-time (Table 6) | {b0:.2f}x | '
                    f'{PAPER_B0_DEPLOY_VS_TRAIN[0] / PAPER_B0_DEPLOY_VS_TRAIN[1]:.2f}x |')
    if not rows:
        return []
    return ['', "The paper's speed comparisons (deployed / fused forms; paper: GTX 1080Ti, "
            'fp32, configs/metafile.yml):', '', '| Pair | Measured here | Paper |',
            '|---|---|---|'] + rows


def fold_time_line(res: dict) -> str:
    """One line for a :func:`fold_time` result."""
    plan = f", plan {res['dilation_plan']}" if res.get('dilation_plan') else ''
    info = res['device_info']
    return (f"fold RepVGG-{res['arch']} backbone{plan} ({res['blocks']} blocks): median "
            f"{res['median_s']:.3f} s (min {res['min_s']:.3f}, max {res['max_s']:.3f}) over "
            f"{len(res['seconds'])} fresh copies, {res['torch_threads']} torch thread(s), "
            f"{info['cpu']}, torch {info['torch']}")


def save_report(report: dict, text: str, out: str | None = None, markdown: str | None = None,
                force: bool = False, inputs: Sequence[str] = ()) -> None:
    """Write a benchmark report as json and its markdown (headed by the report's command).

    Both go through :func:`mmrepvgg.utils.fileio.write_bytes_atomic`, the one writer of every
    output; the tools check the same paths with
    :func:`mmrepvgg.utils.fileio.check_output_paths` before their work.

    Args:
        report: The report (its ``command`` heads the markdown).
        text: The markdown of the report.
        out: The json file (None: not written).
        markdown: The markdown file (None: not written).
        force: Overwrite existing files.
        inputs: Files the report is made from (a rendered json): never overwritten.
    """
    if out:
        write_json_atomic(out, report, force=force, inputs=inputs)
    if markdown:
        write_bytes_atomic(markdown, f"Generated by `{report.get('command', '?')}`.\n\n{text}\n",
                           force=force, inputs=inputs)


#: A block of a markdown file that ``tools/benchmark.py --update-docs`` re-renders from a json:
#: ``<!-- benchmark: docs/gpu/x.json -->`` ... ``<!-- /benchmark -->``.
_MARKED = re.compile(r'(<!-- benchmark: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /benchmark -->)',
                     re.S)


def update_marked_tables(text: str, root: str = '.',
                         paper: Mapping[str, PaperModel] | None = None
                         ) -> tuple[str, list[str]]:
    """Re-render every marked benchmark block of a markdown text from its json.

    Args:
        text: The markdown (e.g. docs/benchmark.md).
        root: Folder the json paths in the markers are relative to (the repo root).
        paper: The loaded metafile, passed to :func:`benchmark_markdown`.

    Returns:
        The new text and the json paths rendered.

    Raises:
        FileNotFoundError: A marker names a json that does not exist.
    """
    paths = []

    def render(m: re.Match) -> str:
        path = m.group('path')
        report = load_report(osp.join(root, path), name=path)
        paths.append(path)
        body = (f"Generated by `{report.get('command', '?')}`; this table by "
                f"`python tools/benchmark.py --render {path}`.\n\n"
                f"{render_report(report, path, paper)}\n")
        return m.group(1) + body + m.group(4)

    return _MARKED.sub(render, text), paths


class ReportError(ValueError):
    """A json that is not a benchmark report (a list, a string, fields of other types)."""


def load_report(path: str, name: str | None = None) -> dict:
    """A benchmark report saved by ``tools/benchmark.py --out``.

    Args:
        path: The json file.
        name: How to name it in messages (default: ``path``).

    Raises:
        ReportError: If the file is not JSON or holds no JSON object.
        FileNotFoundError: If there is no such file.
    """
    name = name or path
    with open(path) as f:
        try:
            report = json.load(f)
        except ValueError as err:
            raise ReportError(f'{name}: not JSON ({err})') from err
    if not isinstance(report, dict):
        raise ReportError(f'{name}: not a benchmark report saved by tools/benchmark.py --out '
                          f'(a JSON {type(report).__name__}, not an object)')
    return report


def render_report(report: dict, name: str,
                  paper: Mapping[str, PaperModel] | None = None) -> str:
    """:func:`benchmark_markdown`, a report whose fields do not fit made a :class:`ReportError`.

    Args:
        report: What :func:`load_report` returned.
        name: The report's file, for the message.
        paper: The loaded metafile.
    """
    try:
        return benchmark_markdown(report, paper)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
        what = (f'missing field {err.args[0]!r}' if isinstance(err, KeyError) and err.args
                else f'{type(err).__name__}: {err}')
        raise ReportError(f'{name}: not a benchmark report saved by tools/benchmark.py --out '
                          f'({what})') from err


def update_docs(files: Sequence[str], paper: Mapping[str, PaperModel] | None = None,
                root: str = '.') -> list[tuple[str, str, list[str]]]:
    """Re-render the marked blocks of markdown files from their json: all files or none.

    Every file is rendered and checked before the first is written, so a bad json named in
    the second file leaves the first unchanged. A file that is a symbolic link is updated
    where it points (the link stays a link).

    Args:
        files: The markdown files.
        paper: The loaded metafile.
        root: Folder the json paths in the markers are relative to.

    Returns:
        ``[(file, written file, json paths)]``; the written file is the link's target.

    Raises:
        ReportError: If a marked json is not a benchmark report.
        FileNotFoundError: A file, or a json a marker names, does not exist.
    """
    pending = []
    for md in files:
        target = osp.realpath(md)  # through a link, to the document itself
        with open(target) as f:
            text = f.read()
        new, paths = update_marked_tables(text, root, paper)
        if new != text:
            check_output_path(target, True, [osp.join(root, p) for p in paths])
        pending.append((md, target, text, new, paths))
    done = []
    for md, target, text, new, paths in pending:
        if new != text:
            write_bytes_atomic(target, new, force=True, inputs=[osp.join(root, p) for p in paths])
        done.append((md, target, paths))
    return done

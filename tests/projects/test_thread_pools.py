"""projects/int8_settings/thread_pools.py runs its three ways of timing on tiny models; no
timing assertions."""
import pytest

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')


def _conv_model(path):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), 'w')
    x = helper.make_tensor_value_info('x', TensorProto.FLOAT, ['N', 3, 224, 224])
    y = helper.make_tensor_value_info('y', TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node('Conv', ['x', 'w'], ['y'], strides=[8, 8])],
                              'conv', [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)],
                                ir_version=10), path)
    return str(path)


def test_three_ways_of_timing(tmp_path):
    from projects.int8_settings.thread_pools import measure
    paths = dict(fp32=_conv_model(tmp_path / 'a.onnx'), int8=_conv_model(tmp_path / 'b.onnx'))
    results = measure(paths, batch=1, threads=1, rounds=2, calls=3)
    assert list(results) == ['alone', 'in turns, default', 'in turns, stop spinning']
    for r in results.values():
        assert r['fp32_ms'] > 0 and r['int8_ms'] > 0
        assert r['speedup_min'] <= r['speedup'] <= r['speedup_max']

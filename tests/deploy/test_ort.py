"""``create_session``: the one ONNX Runtime session factory (the runtime's), as the package
uses it (threads stop spinning between runs) and as the runtime does (ONNX Runtime's default)."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

from mmrepvgg.deploy.onnx import create_session, run_session  # noqa: E402


def _relu_model():
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info('x', TensorProto.FLOAT, ['N', 3])
    y = helper.make_tensor_value_info('y', TensorProto.FLOAT, ['N', 3])
    graph = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'relu', [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)], ir_version=10)


def test_threads_stop_spinning_when_a_run_ends():
    """Sessions timed in turns in one process must not steal each other's cores."""
    session = create_session(_relu_model(), threads=2)
    opts = session.get_session_options()
    assert opts.get_session_config_entry('session.force_spinning_stop') == '1'
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    out = run_session(session, np.array([[-1.0, 0.0, 2.0]], np.float32))
    assert out.tolist() == [[0.0, 0.0, 2.0]]


def test_default_threads_are_onnxruntime_s():
    assert create_session(_relu_model()).get_session_options().intra_op_num_threads == 0


def test_the_runtime_keeps_onnxruntime_s_spinning_default(tmp_path):
    from mmrepvgg_runtime import create_session as runtime_session
    path = tmp_path / 'relu.onnx'
    onnx.save(_relu_model(), str(path))
    opts = runtime_session(path).get_session_options()
    with pytest.raises(RuntimeError, match='does not have configuration'):
        opts.get_session_config_entry('session.force_spinning_stop')

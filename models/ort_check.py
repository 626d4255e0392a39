"""Cross-check of the torch forward against onnxruntime on random inputs."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from models.errors import ModelError, UnsupportedModel
from models.evaluate import GraphEvaluator
from models.graph import Graph, Node

__all__ = ["check_against_onnxruntime", "onnxruntime_session", "run_onnxruntime"]

REL_TOL = 1e-4


def onnxruntime_session(model_bytes: bytes):
    """A single-threaded CPU session: what VNN-COMP replays counterexamples with."""
    import onnxruntime as ort  # lazy: `import models` loads neither onnx nor onnxruntime, only a session does

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the model: {exc}") from None


def run_onnxruntime(session, x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Run one input (any layout with the right size) and return the flat output."""
    inp = session.get_inputs()[0]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    feed = {inp.name: np.asarray(x, dtype=dtype).reshape(input_shape)}
    return np.asarray(session.run(None, feed)[0], dtype=np.float64).reshape(-1)


def check_against_onnxruntime(graph: Graph, model_bytes: bytes, samples: int = 3, seed: int = 0) -> None:
    """Refuse the model when torch (float64) and onnxruntime disagree beyond REL_TOL.

    The error is relative to the output scale, since float32 onnxruntime cannot be
    closer than its own rounding to the exact value.
    """
    session = onnxruntime_session(model_bytes)
    rng = np.random.default_rng(seed)
    xs = rng.uniform(0.0, 1.0, size=(samples, *graph.input_shape)).astype(np.float32)
    # onnxruntime first: a model it loads but cannot run (a Gemm's bias that does not
    # broadcast) is the file's fault, and our evaluator may fail on it in its own words;
    # where onnxruntime runs it, a failure of ours is ours (an internal error).
    try:
        theirs_all = [run_onnxruntime(session, x, graph.input_shape) for x in xs]
    except Exception as exc:   # onnxruntime's own error classes (InvalidArgument, Fail, ...)
        raise ModelError(f"onnxruntime cannot run the model: {str(exc).strip().splitlines()[-1]}") from None
    evaluator = GraphEvaluator(graph, dtype=torch.float64)
    ours = evaluator(torch.from_numpy(xs).double()).reshape(samples, -1).numpy()
    for i in range(samples):
        theirs = theirs_all[i]
        if theirs.shape != ours[i].shape:
            raise UnsupportedModel(f"output size {ours[i].size} differs from onnxruntime's {theirs.size}")
        err = _relative_error(theirs, ours[i])
        if not err <= REL_TOL:
            message = f"torch forward differs from onnxruntime (relative error {err:.2e} > {REL_TOL:g})"
            first = _first_divergence(graph, model_bytes, xs[i])
            if first is None:
                raise UnsupportedModel(f"{message}; ops in the model: {', '.join(graph.op_types())}")
            node, name, node_err = first
            raise UnsupportedModel(f"{message}; the first tensor that differs is this node's output '{name}' "
                                   f"(relative error {node_err:.2e})", node=node.name, op=node.qualified_op,
                                   opset=node.opset)


def _relative_error(theirs: np.ndarray, ours: np.ndarray) -> float:
    """Largest difference relative to the output's scale: float32 onnxruntime cannot be
    closer than its own rounding to the exact value."""
    scale = max(float(np.abs(theirs).max(initial=0.0)), 1e-3)
    return float(np.abs(theirs - ours).max(initial=0.0)) / scale


def _first_divergence(graph: Graph, model_bytes: bytes, x: np.ndarray) -> Optional[tuple[Node, str, float]]:
    """The first node, in graph order, whose output differs from onnxruntime's value of
    the same tensor on input `x` (node, tensor, relative error), or None when none can
    be told: every tensor both graphs name is made an output of a copy of the model.
    Tensors the import made (expanded or fused ops) have no onnxruntime value and are
    passed over, so the node named is the first that can be compared, not always the
    culprit's own (a fused Conv is reported under its BatchNormalization's output)."""
    import onnx  # lazy, as in onnxruntime_session: only a refused model gets here

    try:
        proto = onnx.load_from_string(model_bytes)
        declared = {o.name for o in proto.graph.output}
        theirs_names = {o for n in proto.graph.node for o in n.output if o}
        wanted = [o for n in graph.nodes for o in n.outputs if o in theirs_names]
        for name in wanted:
            if name not in declared:
                proto.graph.output.append(onnx.ValueInfoProto(name=name))
        session = onnxruntime_session(proto.SerializeToString())
        inp = session.get_inputs()[0]
        dtype = np.float64 if inp.type == "tensor(double)" else np.float32
        feed = {inp.name: np.asarray(x, dtype=dtype).reshape(graph.input_shape)}
        theirs = dict(zip(wanted, session.run(wanted, feed)))
    except Exception:  # the diagnosis is a courtesy: the refusal stands without it
        return None
    evaluator = GraphEvaluator(graph, dtype=torch.float64)
    values = {graph.input_name: torch.from_numpy(np.asarray(x, dtype=np.float64)).reshape(1, *graph.input_shape)}
    for node in graph.nodes:
        for name, value in zip(node.outputs, evaluator.run_node(node, values)):
            values[name] = value
            if name not in theirs:
                continue
            ref = np.asarray(theirs[name], dtype=np.float64).reshape(-1)
            mine = value.detach().double().reshape(-1).numpy()
            if ref.shape != mine.shape:
                return node, name, float("inf")
            err = _relative_error(ref, mine)
            if not err <= REL_TOL:
                return node, name, err
    return None

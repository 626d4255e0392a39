"""Cross-check of the torch forward against onnxruntime on random inputs."""
from __future__ import annotations

import numpy as np
import torch

from models.errors import ModelError, UnsupportedModel
from models.evaluate import GraphEvaluator
from models.graph import Graph

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
    evaluator = GraphEvaluator(graph, dtype=torch.float64)
    ours = evaluator(torch.from_numpy(xs).double()).reshape(samples, -1).numpy()
    for i in range(samples):
        theirs = run_onnxruntime(session, xs[i], graph.input_shape)
        if theirs.shape != ours[i].shape:
            raise UnsupportedModel(f"output size {ours[i].size} differs from onnxruntime's {theirs.size}")
        scale = max(float(np.abs(theirs).max()), 1e-3)
        err = float(np.abs(theirs - ours[i]).max()) / scale
        if not err <= REL_TOL:
            raise UnsupportedModel(
                f"torch forward differs from onnxruntime (relative error {err:.2e} > {REL_TOL:g}); "
                f"ops in the model: {', '.join(graph.op_types())}")

"""A loaded model as the verifier sees it: the checked graph plus the original bytes.

The original ONNX bytes are kept so that every counterexample is replayed by
onnxruntime on exactly the file the user gave, not on our reading of it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models import Graph, graph_from_proto, load_onnx, read_onnx_bytes
from models.ort_check import check_against_onnxruntime, onnxruntime_session, run_onnxruntime

__all__ = ["Model", "load_model", "model_from_proto"]


@dataclass
class Model:
    graph: Graph
    path: str
    onnx_bytes: bytes = field(repr=False)
    _session: object = field(default=None, repr=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph.input_shape

    @property
    def n_inputs(self) -> int:
        return self.graph.input_size

    @property
    def n_outputs(self) -> int:
        return self.graph.output_size

    def run_onnxruntime(self, x: np.ndarray) -> np.ndarray:
        """The flat output onnxruntime computes for the float32 input `x`."""
        if self._session is None:
            self._session = onnxruntime_session(self.onnx_bytes)
        return run_onnxruntime(self._session, x, self.graph.input_shape)


def load_model(path: str | Path, check: bool = True) -> Model:
    """Load and check an ONNX model (raises ModelError / UnsupportedModel)."""
    path = Path(path)
    graph = load_onnx(path, check=check)
    data = read_onnx_bytes(path)  # decompressed when the file is .onnx.gz: onnxruntime replays these bytes
    return Model(graph=graph, path=str(path), onnx_bytes=data)


def model_from_proto(proto: object, label: str, check: bool = True, data: bytes | None = None) -> Model:
    """A model already parsed (``data``: the file's bytes) or built in memory
    (``models.product``; serialised here): checked against onnxruntime like a file, and
    replayed on these exact bytes."""
    data = proto.SerializeToString() if data is None else data
    graph = graph_from_proto(proto, source=label, sha256=hashlib.sha256(data).hexdigest())
    if check:
        check_against_onnxruntime(graph, data)
    return Model(graph=graph, path=label, onnx_bytes=data)

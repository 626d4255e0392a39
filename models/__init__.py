"""The computation graph: ONNX import, immutable nodes, rewrite passes, reference forward.

`models` imports nothing else of ours, so every other package can rely on it.
"""
from __future__ import annotations

from models.errors import ModelError, UnsupportedModel
from models.evaluate import GraphEvaluator
from models.graph import Graph, Node
from models.onnx_import import graph_from_proto, load_onnx, read_onnx_bytes

__all__ = ["Graph", "Node", "GraphEvaluator", "ModelError", "UnsupportedModel", "load_onnx",
           "read_onnx_bytes", "graph_from_proto"]

"""Typed errors for model loading.

A model we cannot read faithfully must be refused, never guessed at: every error
names the node, the op and the opset so that a user can see what to change.
"""
from __future__ import annotations

__all__ = ["ModelError", "UnsupportedModel"]


class ModelError(Exception):
    """The file is not a readable ONNX model (missing, truncated, malformed)."""


class UnsupportedModel(ModelError):
    """The model is valid ONNX but uses something nncert cannot reproduce."""

    def __init__(self, message: str, *, node: str | None = None, op: str | None = None,
                 opset: int | None = None) -> None:
        where = []
        if node is not None:
            where.append(f"node '{node}'")
        if op is not None:
            where.append(f"op {op}" + (f" (opset {opset})" if opset is not None else ""))
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.node, self.op, self.opset = node, op, opset

"""`nncert spec convert IN OUT [--model M]`: a property from VNN-LIB 1.0 to 2.0 or back.

The direction follows IN: a 1.0 file becomes a 2.0 query with one network ``N``, input
``X`` and output ``Y`` (float32; shaped like the model's input and output with
``--model``, flat otherwise); a 2.0 query becomes 1.0 where it uses nothing 1.0 lacks
(one network, one input, one output, no hidden node, no product, no row tying inputs to
outputs), else the command says which construct stops it (exit 2). Both read back to
the same Spec; a 2.0 file is checked by the standard's parser before it is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "cmd_convert"]


def cmd_convert(args: argparse.Namespace) -> int:
    # lazy: vnnlib imports numpy, which the CLI's start-up does not load
    import vnnlib
    from vnnlib.query import parse_query
    from vnnlib.standard import file_version
    from vnnlib.writer import format_vnnlib, format_vnnlib2

    if file_version(args.input) is None:
        spec = vnnlib.load(args.input)
        shapes = (None, None)
        if args.model:
            from verifier.model import load_model  # lazy: verifier.model imports torch, only for --model

            graph = load_model(args.model).graph
            shapes = (graph.input_shape, graph.output_shape)
            spec = vnnlib.load(args.input, graph.input_size, graph.output_size)
        text = format_vnnlib2(spec, *shapes)
        parse_query(text, args.output)   # the standard's parser must accept what we write
    else:
        text = format_vnnlib(vnnlib.load(args.input))
    Path(args.output).write_text(text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spec", help="VNN-LIB files: convert between 1.0 and 2.0")
    actions = p.add_subparsers(dest="spec_command", required=True)
    c = actions.add_parser("convert", help="IN (1.0 or 2.0) to OUT in the other version")
    c.add_argument("input", metavar="IN")
    c.add_argument("output", metavar="OUT")
    c.add_argument("--model", default=None, help="shape the 2.0 tensors like this ONNX model's input and output")
    c.set_defaults(func=cmd_convert)

"""Parse time of a VNN-LIB 1.0 file against its 2.0 form (issue 23's parsing measure).

Writes the 2.0 form of FILE (its box and output rows, through our 2.0 writer) to a
temporary folder, then loads both with `vnnlib.load` alternately and prints the median and
fastest of each, in milliseconds.

    python benchmarks/vnnlib_parse_time.py ../shared/bench/2022_oval21/vnnlib/cifar_base_kw-img876-eps0.024836601307189544.vnnlib \\
        --input-shape 1 3 32 32 --output-shape 1 10
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import vnnlib
from vnnlib.writer import format_vnnlib2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--input-shape", type=int, nargs="+", required=True)
    parser.add_argument("--output-shape", type=int, nargs="+", required=True)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    spec = vnnlib.load(args.file)
    with tempfile.TemporaryDirectory() as folder:
        v2 = Path(folder) / "query.vnnlib"
        v2.write_text(format_vnnlib2(spec, args.input_shape, args.output_shape))
        vnnlib.load(v2)   # the standard's parser is loaded on first use
        one, two = [], []
        for _ in range(args.reps):
            start = time.perf_counter()
            vnnlib.load(args.file)
            middle = time.perf_counter()
            vnnlib.load(v2)
            two.append(time.perf_counter() - middle)
            one.append(middle - start)
    print(f"1.0: median {statistics.median(one) * 1e3:.1f} ms (fastest {min(one) * 1e3:.1f}); "
          f"2.0: median {statistics.median(two) * 1e3:.1f} ms (fastest {min(two) * 1e3:.1f})")


if __name__ == "__main__":
    main()

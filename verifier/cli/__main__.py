"""`python -m verifier.cli`: the `nncert` command line."""
import sys

from verifier.cli import main

__all__: list[str] = []

sys.exit(main())

"""`python -m verifier.cli`: the `nncert` command line."""
import sys

from verifier.cli import main

sys.exit(main())

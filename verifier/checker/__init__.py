"""Independent certificate checkers (small, numpy only, sharing no code with producers)."""

from verifier.checker.lipschitz import check_lipschitz_certificate

__all__ = ["check_lipschitz_certificate"]

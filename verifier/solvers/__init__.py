"""Solver back ends (one adapter file per solver family); imported lazily by callers."""

__all__: list[str] = []

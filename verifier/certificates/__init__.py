"""Certificates of verdicts, written beside a run: `writer` (input-split tilings, the
conjunction and activation-split entries' frame) and `activation` (activation-split
leaves re-derived in float64). The independent checker that reads them is
`verifier.checker`, which shares no code with this package."""

__all__: list[str] = []  # a package of modules: import them by name

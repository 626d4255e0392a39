"""LPs and MILPs over a ReLU network or an input region (HiGHS): `refine` (intermediate
bounds by LPs, the exact MILP), `phase` (when `verify` runs them), `region` (empty-region
proofs, the polytopes of activation split's leaves)."""

__all__: list[str] = []  # a package of modules: import them by name

"""For PyTorch users: certified training (`training`: `certified_loss` and its bounds) and
verification of a torch module over l-inf or l2 balls without files (`verify_module`); both
take the ball's norm and the valid input range as a `Perturbation` (`perturbation.py`),
and the radius on its own."""

__all__: list[str] = []  # a package of modules: import them by name

"""For PyTorch users: certified training (`training`: `certified_loss` and its bounds) and
verification of a torch module over l-inf or l2 balls without files (`verify_module`)."""

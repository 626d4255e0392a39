"""Branch and bound: domain batches, splitting, the search loops, proof records.

Imports `relaxations` and `models` only.
"""
from __future__ import annotations

from bab.activation_split import ActivationSplitOutcome, activation_split_bab
from bab.domains import DomainBatch
from bab.input_split import InputSplitOutcome, InputSplitProblem, input_split_bab, rows_status
from bab.proof import ActivationProofLog, ProofLog

__all__ = ["ActivationSplitOutcome", "activation_split_bab", "DomainBatch", "InputSplitOutcome", "InputSplitProblem", "input_split_bab", "rows_status", "ProofLog", "ActivationProofLog"]

"""Branch and bound: one search loop (`bab.search`), its kinds of branching (input split,
activation split), domain batches and store, clipping, the in-search attack, proof records.

Imports `relaxations` and `models` only.
"""
from __future__ import annotations

from bab.activation_split import ReluBrancher, ReluSearch, activation_split_bab
from bab.domains import Batch, DomainBatch, DomainStore, SplitDomains
from bab.input_split import InputBrancher, InputSearch, input_split_bab
from bab.problem import Problem, rows_status
from bab.proof import ActivationProofLog, ProofLog
from bab.search import Brancher, SearchHooks, SearchLimits, SearchOutcome, search
from bab.tuning import DEFAULT_TUNING, Tuning

__all__ = ["ReluBrancher", "ReluSearch", "activation_split_bab", "Batch", "DomainBatch", "DomainStore",
           "SplitDomains", "InputBrancher", "InputSearch", "input_split_bab", "Problem", "rows_status",
           "ActivationProofLog", "ProofLog", "Brancher", "SearchHooks", "SearchLimits", "SearchOutcome", "search",
           "DEFAULT_TUNING", "Tuning"]

"""What can be sampled, and the parameter budget (SPEC §3).

``ArchSpec`` describes one network; ``solve_widths`` fits its widths to a
parameter budget; ``sample_spec`` turns a trial (anything with Optuna's
``suggest_*`` methods) into a spec. Optuna itself is never imported here.
"""
from .budget import (DEFAULT_TOLERANCE, BudgetError, count_params, parse_budget, solve_widths,
                     within_budget)
from .sampling import sample_spec
from .spec import ArchSpec, SpecError, StageSpec, StepSpec

__all__ = ["ArchSpec", "BudgetError", "DEFAULT_TOLERANCE", "SpecError", "StageSpec", "StepSpec",
           "count_params", "parse_budget", "sample_spec", "solve_widths", "within_budget"]

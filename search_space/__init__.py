"""What can be sampled, and the parameter budget.

``sample_spec`` turns a trial (anything with Optuna's ``suggest_*`` methods)
into a ``models.ArchSpec`` without widths; ``solve_widths`` fits its widths
to a parameter budget.

May import: ``models``, numpy. Never optuna (a trial is duck-typed),
``trainers`` or ``studies``.
"""
from .budget import (DEFAULT_TOLERANCE, BudgetError, count_params, format_count, parse_budget, solve_widths,
                     within_budget)
from .sampling import RandomTrial, param_range, sample_spec

__all__ = ["BudgetError", "DEFAULT_TOLERANCE", "RandomTrial", "count_params", "format_count", "param_range",
           "parse_budget",
           "sample_spec", "solve_widths", "within_budget"]

"""Every figure of privkit, from tidy tables (or arrays), as ``matplotlib.figure.Figure``.

Figures are built without ``pyplot`` state and share three things, each written once:

* :mod:`privkit.plots.epsilon_axis`: the one epsilon axis (base-2 log, ticks at the epsilons
  present, non-private results at their own "non-private" position on the right);
* :mod:`privkit.plots._figure`: the one seaborn theme, a new figure or the caller's axes, the
  check of a table's columns, and :func:`save_figure` (PNG and PDF, atomically);
* one module per topic: ``utility``, ``budget``, ``attacks``, ``trust``, ``federated``,
  ``reconstruction``.

Notebooks call ``plots.<figure>(table)`` and ``plots.save_figure(fig, stem)``.
"""

from privkit.plots._figure import save_figure
from privkit.plots.attacks import audit_epsilons, roc_curves, tpr_against_epsilon
from privkit.plots.budget import (
    budget_spending,
    epsilon_over_training,
    individual_vs_uniform,
    risk_curves,
)
from privkit.plots.federated import federated_comparison
from privkit.plots.reconstruction import reconstruction_grid
from privkit.plots.trust import calibration_by_epsilon, reliability_diagrams, subgroup_gaps
from privkit.plots.utility import privacy_utility

__all__ = [
    "audit_epsilons",
    "budget_spending",
    "calibration_by_epsilon",
    "epsilon_over_training",
    "federated_comparison",
    "individual_vs_uniform",
    "privacy_utility",
    "reconstruction_grid",
    "reliability_diagrams",
    "risk_curves",
    "roc_curves",
    "save_figure",
    "subgroup_gaps",
    "tpr_against_epsilon",
]

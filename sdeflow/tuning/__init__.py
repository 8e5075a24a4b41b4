"""Time grids tuned to a model, a sampler and a budget of evaluations.

At 5-10 evaluations the error of a good solver is dominated by where its steps fall, and the best
places depend on the model and its data. :func:`optimize_grid` fits a grid for one model, sampler and
NFE on a batch of prior draws against a *teacher*: a many-step reference solve of the
probability-flow ODE from the same draws (third-order DPM-Solver on a fine grid, float64).

- ``"dp"``: dynamic programming over a fine candidate grid, uniform in logSNR. The cost of a step
  between two candidates is the RMS error of one step of the sampler started on the teacher's
  trajectory; the ``n``-step grid with the least summed local error is found exactly (the
  optimal-stepsize / GITS construction).
- ``"descent"``: the endpoint RMS error against the teacher (LD3's teacher loss) minimised over the
  grid's ``n`` free parameters by BFGS, from the best hand grids, with the gradient taken through the
  sampling run by autograd (:class:`~.fit.GridGradient`: every number of the plan a leaf, the model
  differentiated in its time input, the numbers' own derivatives by differences of the planning;
  one run and its backward pass per gradient instead of ``2n`` runs).
- ``"dp+descent"`` (the default): descents from the DP grid and from the best hand grids.

Every tuned grid has ``n`` steps and ends with a step to clean data:
``t_max = t_0 > t_1 > ... > t_{n-1} > t_n = 0``. Its free times are parameterized in logSNR between
``lam(t_max)`` and the smallest level allowed (noise level ``sigma / alpha = 1e-3``, or a discrete
schedule's first training step) by a softmax of ``n`` logits (``n - 1`` increments and a remainder),
so every parameter value is a valid, strictly decreasing grid inside the schedule's domain.

For Gaussian data the exact output law of a sampler is a function of the grid
(:func:`~sdeflow.analytic.gaussian_output_law`): :func:`exact_optimal_grid` minimises the exact W2
over the same parameters, the certificate every fitted or hand grid is scored against, and
:func:`ays_gaussian_grid` is Align Your Steps' closed form (a tangent law in the noise level).

A second stage fits the sampler itself on the tuned grid: :func:`optimize_coefficients` changes every
coefficient of the sampler's plan (the weights of the state and of the model outputs each step
combines) to lower the same teacher loss, through autograd, with early stopping on held-out draws;
:class:`~sdeflow.samplers.FittedSampler` runs the result.

Before any fit, :func:`choose_configuration` picks the configuration itself: every candidate sampler
on every hand grid of the schedule's family, run at the budget on a pilot batch of draws against the
teacher, the least error kept (``sdeflow tune --method choose``). No fixed table of defaults is close
to the best configuration on most problems (the best grid depends on the scales of the data); a pilot
run measures it for the model at hand.

The pieces: :mod:`.space` (the parameterized grids, candidates, hand grids), :mod:`.draws` (the teacher,
the trimmed losses, the held-out split, the starts), :mod:`.fit` (the DP, the descent,
:func:`optimize_grid`), :mod:`.coefficients` (:func:`optimize_coefficients`),
:mod:`.exact` (the Gaussian certificate and the tangent law), :mod:`.choose` (the pilot choice),
:mod:`.store` (tuned grids beside a checkpoint).

Tuned grids are values: :class:`TunedGrid` records the grid with its sampler, NFE, loss, the best
hand grid's loss and the fitting cost, and :func:`save_tuned` / :func:`load_tuned` keep them in a JSON
file beside a checkpoint (``<checkpoint>.grids.json``; for a shipped model, in the user folder, see
:mod:`.store`), where ``sdeflow sample --grid tuned`` finds them.
"""

from .choose import candidates, choose_configuration
from .coefficients import optimize_coefficients
from .exact import ays_gaussian_grid, exact_optimal_grid
from .draws import STARTS, Split, Teacher, endpoint_loss
from .fit import GRADIENTS, METHODS, GridGradient, best_path, check_tunable, descend, dp_grid, optimize_grid
from .space import HAND_GRIDS, SIGMA_FLOOR, GridSpace, candidate_times, hand_grids, steps_for
from .store import (TunedGrid, find_chosen, find_tuned, load_tuned, model_choice, model_recommended, model_recommended_name,
                    save_tuned, tuned_path, tuned_paths)

__all__ = ["GRADIENTS", "HAND_GRIDS", "METHODS", "STARTS", "GridGradient", "SIGMA_FLOOR", "GridSpace", "Split", "Teacher",
           "TunedGrid", "ays_gaussian_grid", "best_path", "candidate_times", "candidates", "check_tunable",
           "choose_configuration", "descend", "dp_grid",
           "endpoint_loss", "exact_optimal_grid", "find_chosen", "find_tuned", "hand_grids", "load_tuned", "model_choice",
           "model_recommended", "model_recommended_name", "optimize_coefficients",
           "optimize_grid", "save_tuned", "steps_for", "tuned_path", "tuned_paths"]

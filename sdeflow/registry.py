"""Every name the command line accepts, gathered from the tables' homes (each kind of name has one table,
a :class:`~sdeflow.names.NameTable`, in the module that defines the things it names). Inside the library
objects are passed, not names, and modules read a table from its home; this module is what the command
line, the benchmarks and users who want every table at once import."""

from __future__ import annotations

from .analytic import PROBLEMS
from .grids import GRIDS, parse_grid
from .guidance import METHODS as GUIDANCE_METHODS
from .inverse import METHODS as INVERSE_METHODS
from .inverse import OPERATORS, make_operator
from .names import NameTable, lookup
from .samplers import (ALL_SAMPLERS, DEFAULTS, FLOW_MAP_SAMPLERS, SAMPLERS, default_sampling, deterministic_samplers,
                       family, steps_for_nfe)
from .schedules import SCHEDULES

__all__ = ["ALL_SAMPLERS", "DEFAULTS", "FLOW_MAP_SAMPLERS", "GRIDS", "GUIDANCE_METHODS", "INVERSE_METHODS", "NameTable",
           "OPERATORS", "PROBLEMS", "SAMPLERS", "SCHEDULES", "default_sampling", "deterministic_samplers", "family",
           "lookup", "make_operator", "parse_grid", "steps_for_nfe"]

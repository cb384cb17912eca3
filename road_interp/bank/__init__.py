"""Mixed-adapter serving: an adapter bank of K RoAd adapters stacked as coefficient tables
(row 0 = the base model), and per-request routing for forward passes and ``generate``.

See `road_interp.bank.bank` for how routing works and `road_interp.bank.tables` for the
tables."""

from .bank import AdapterBank, Route
from .tables import CoefficientTables, SiteTable

__all__ = ["AdapterBank", "CoefficientTables", "Route", "SiteTable"]

"""Model adapters behind one protocol (:class:`~editflow.models.base.FlowModel`) and the zoo."""

from .base import NFE, Cond, FlowModel, TokenGrid
from .flux import FluxAdapter
from .zoo import DEFAULT_MODEL, ZOO, load_model, wrap_pipeline

__all__ = ["DEFAULT_MODEL", "NFE", "ZOO", "Cond", "FlowModel", "FluxAdapter", "TokenGrid", "load_model", "wrap_pipeline"]

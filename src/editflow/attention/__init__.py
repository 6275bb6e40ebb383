"""Attention control for FLUX transformers (shared/DESIGN.md section 4).

Methods pass an :class:`AttentionControl` to ``model.velocity(..., control=...)``; for that call
the adapter swaps every attention processor for a :class:`~editflow.attention.flux.FluxControlProcessor`
that calls the control's hooks, and restores the model's own processors afterwards (also on
error). Features a method keeps between calls go in a :class:`FeatureStore`.
"""

from .context import AttentionContext, AttentionControl
from .store import FeatureStore, time_key

__all__ = ["AttentionContext", "AttentionControl", "FeatureStore", "time_key"]

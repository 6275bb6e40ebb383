"""Editing methods: one module per paper, each a params dataclass and one function.

``METHODS`` maps a name to its :class:`~editflow.methods.base.Method` (params class, function,
NFE formula, citation). Importing this package registers them all.
"""

from . import (  # noqa: F401  (registration)
    dit4edit, dnaedit, fireflow, flowalign, flowedit, ftedit, kv_edit, ode_inversion, personalize_anything, rf_edit,
    rf_inversion, stable_flow, uniedit,
)
from .base import METHODS, EditRequest, Method, MethodParams, SubjectTokens, get_method
from .dit4edit import DiT4EditParams
from .dnaedit import DNAEditParams
from .fireflow import FireFlowParams
from .flowalign import FlowAlignParams
from .flowedit import FlowEditParams
from .ftedit import FTEditParams
from .kv_edit import KVEditParams
from .ode_inversion import ODEInversionParams
from .rf_edit import RFEditParams
from .rf_inversion import RFInversionParams
from .stable_flow import StableFlowParams
from .uniedit import UniEditParams

__all__ = [
    "METHODS", "DNAEditParams", "DiT4EditParams", "EditRequest", "FireFlowParams", "FlowAlignParams", "FlowEditParams", "FTEditParams",
    "KVEditParams", "Method", "MethodParams", "ODEInversionParams", "RFEditParams", "RFInversionParams",
    "StableFlowParams", "SubjectTokens", "UniEditParams", "get_method",
]

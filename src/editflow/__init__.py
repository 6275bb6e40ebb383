"""editflow: training-free text-driven image editing with flow-matching transformers.

>>> import editflow
>>> model = editflow.load_model("tiny-flux")
>>> result = editflow.edit(model, "photo.png", "a red circle", "a blue circle", method="flowedit", seed=0)
>>> result.image.save("edited.png")
"""

from .api import EditResult, Subject, edit, edit_many, generate
from .errors import EditflowError, LimitError, ModelNotAvailableError, ParameterError
from .limits import Limits
from .methods import METHODS
from .methods.cache import InversionCache
from .models.base import NFE, Cond, FlowModel, TokenGrid
from .models.zoo import DEFAULT_MODEL, ZOO, load_model, wrap_pipeline

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "METHODS",
    "NFE",
    "ZOO",
    "Cond",
    "EditResult",
    "EditflowError",
    "FlowModel",
    "InversionCache",
    "LimitError",
    "Limits",
    "ModelNotAvailableError",
    "ParameterError",
    "Subject",
    "TokenGrid",
    "edit",
    "edit_many",
    "generate",
    "load_model",
    "wrap_pipeline",
]

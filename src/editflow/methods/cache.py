"""An inversion cache: re-editing the same image with a new target prompt skips the inversion.

Methods whose inversion does not depend on the target prompt (ode_inversion, rf_inversion,
dit4edit, stable_flow, uniedit, dnaedit, ftedit, rf_edit, fireflow) compute it through :func:`inverted`; when the request carries an
:class:`InversionCache`, the result is looked up by everything it depends on: the model, the
method, the clean source tokens (hashed), the source prompt and the method's inversion parameters
(and, for RF-Inversion and DNAEdit, their noise). A hit costs no model call and sets
``stats["inversion_cached"] = True``. Cached values are kept as computed (on the model's device);
a cache holds at most ``size`` entries and ``max_bytes`` bytes of tensors (default 4 GiB),
least recently used first out; the newest entry always stays. RF-Edit's and FireFlow's entries
hold their V store too (``stats["feature_store_peak_bytes"]``: about 1.6 GiB on FLUX.1-dev at
512 px, 4.75 GiB at 1024 without ``offload``), which ``max_bytes`` counts. ``editflow batch`` and
:func:`editflow.edit_many` keep one entry (``editflow batch`` empties it between images). KV-Edit's inversion is not cached: its K/V store is far
larger (48 GiB on FLUX.1-dev at 1024 px with a 25% mask), and its replay and inversion-free modes
clear and refill it while editing.

>>> cache = editflow.InversionCache()
>>> a = editflow.edit(model, "cat.png", "a cat", "a dog", method="ode_inversion", cache=cache)
>>> b = editflow.edit(model, "cat.png", "a cat", "a fox", method="ode_inversion", cache=cache)
>>> b.stats["inversion_cached"], b.nfe.calls < a.nfe.calls
(True, True)
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Callable

import torch

from ..errors import ParameterError


def digest(x: torch.Tensor) -> str:
    """A content hash of a tensor (dtype, shape and bytes)."""
    t = x.detach().contiguous().cpu()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def nbytes(value: Any) -> int:
    """Bytes of the tensors in a cached value (tensors, feature stores, and containers of them)."""
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return int(getattr(value, "nbytes", 0) or 0)


class InversionCache:
    def __init__(self, size: int = 8, max_bytes: int = 4 * 2**30):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ParameterError(f"InversionCache size must be a whole number >= 1, got {size!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ParameterError(f"InversionCache max_bytes must be a whole number >= 0, got {max_bytes!r}")
        self.size, self.max_bytes = size, max_bytes
        self.entries: OrderedDict[tuple, Any] = OrderedDict()
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(nbytes(v) for v in self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def get_or_compute(self, key: tuple, compute: Callable[[], Any]) -> tuple[Any, bool]:
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
            return self.entries[key], True
        value = compute()
        self.misses += 1
        self.entries[key] = value
        while len(self.entries) > 1 and (len(self.entries) > self.size or self.nbytes > self.max_bytes):
            self.entries.popitem(last=False)
        return value, False

    def clear(self) -> None:
        self.entries.clear()


def inverted(model, req, method: str, compute: Callable[[], Any], **depends) -> Any:
    """``compute()`` (the method's inversion), through ``req.cache`` when it has one; ``depends``:
    the parameters the inversion depends on besides model, image and source prompt."""
    cache = getattr(req, "cache", None)
    if cache is None:
        return compute()
    parts = tuple(sorted((k, digest(v) if isinstance(v, torch.Tensor) else v) for k, v in depends.items()))
    key = (getattr(model, "name", "?"), method, digest(req.x_src), req.grid, req.source_prompt, parts)
    value, hit = cache.get_or_compute(key, compute)
    req.stats["inversion_cached"] = hit
    return value

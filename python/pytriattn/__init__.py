"""pytriattn: llama.cpp GGUF models on the CPU with a TriAttention-compressed KV cache.

    from pytriattn import Llama
    with Llama() as llm:                      # None = the default model, fetched on first use
        print(llm.generate("The capital of France is", max_tokens=16, temperature=0))

Importing is cheap: the library is loaded (and its ABI checked) when the first Llama is created.
"""
from __future__ import annotations

from ._errors import FetchError, TriattnError

__version__ = "0.1.0"
__all__ = ["Llama", "TriattnError", "FetchError", "ensure_default_model", "cache_dir", "library_path",
           "binary_path", "__version__"]


def __getattr__(name: str):
    # Lazy: keeps `import pytriattn` fast and free of numpy/cffi/model loading.
    if name == "Llama":
        from .llama import Llama
        return Llama
    if name in ("ensure_default_model", "cache_dir"):
        from . import _fetch
        return getattr(_fetch, name)
    if name in ("library_path", "binary_path"):
        from . import _lib
        return getattr(_lib, name)
    raise AttributeError(f"module 'pytriattn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

"""Triton kernels built on first use, and nothing where Triton cannot be imported (the CPU wheels of
torch ship without it): the method libraries stay importable everywhere."""

from __future__ import annotations

from typing import Any, Callable, Optional


def lazy_triton(build: Callable[[Any, Any], Any]) -> Callable[[], Optional[Any]]:
    """A function that returns ``build(triton, triton.language)``, made once on its first call, or None
    where Triton cannot be imported."""
    made = []

    def get():
        if not made:
            try:
                import triton
                import triton.language as tl
            except ImportError:
                made.append(None)
            else:
                made.append(build(triton, tl))
        return made[0]

    return get

"""A sparsity target: an unstructured ratio of zeros, or an N:M pattern."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from spruce.core.errors import SpecError

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Sparsity:
    """A sparsity target: an unstructured ratio of zeros, or an N:M pattern.

    N:M follows the NVIDIA / PyTorch semi-structured convention: at most N non-zeros in every
    group of M consecutive weights along the input dimension, so 2:4 and 4:8 are both 50%.
    """

    ratio: float
    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        return self.n is not None

    @classmethod
    def parse(cls, value: Any, *, param: str = "sparsity") -> Sparsity:
        if isinstance(value, bool):
            raise SpecError("must be a number in (0, 1) or an 'N:M' string", param=param)
        if isinstance(value, (int, float)):
            ratio = float(value)
            if not 0.0 < ratio < 1.0:
                raise SpecError(f"ratio {value} is not in (0, 1)", param=param)
            return cls(ratio=ratio)
        if isinstance(value, str):
            match = _NM.match(value)
            if match:
                n, m = int(match.group(1)), int(match.group(2))
                if not 0 < n < m:
                    raise SpecError(f"'{value}': N:M needs 0 < N < M", param=param)
                if m > 256:
                    raise SpecError(f"'{value}': M must be at most 256", param=param)
                return cls(ratio=1.0 - n / m, n=n, m=m)
            try:
                return cls.parse(float(value), param=param)
            except ValueError:
                pass
        raise SpecError(
            f"{value!r} is neither a ratio in (0, 1) nor an 'N:M' string such as '2:4'", param=param
        )

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.ratio:g}"

    def to_json(self) -> float | str:
        return str(self) if self.is_nm else self.ratio

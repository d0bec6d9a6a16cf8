"""Rows of several arrays read as one, a batch at a time.

The pool can exceed memory: its shards are memory maps, and refining C or attacking the pool gathers only
the rows of the current batch from them (a few pages each), converting just those to tensors. The parts
may also be tensors (an entity's own features, computed in memory). Indexing gives what one tensor
concatenating the parts would give, in the parts' dtype, so results do not depend on how rows are held.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

Part = np.ndarray | torch.Tensor


def _torch_dtype(part: Part) -> torch.dtype:
    if isinstance(part, torch.Tensor):
        return part.dtype
    return torch.from_numpy(np.empty(0, dtype=part.dtype)).dtype


class Rows:
    """Parts of equal row shape and dtype, seen as their concatenation along the first axis."""

    def __init__(self, parts: Sequence[Part]) -> None:
        if not parts:
            raise ValueError("Rows needs at least one part")
        self._parts = list(parts)
        self.row_shape = tuple(int(n) for n in self._parts[0].shape[1:])
        self.dtype = _torch_dtype(self._parts[0])
        for i, part in enumerate(self._parts):
            if tuple(part.shape[1:]) != self.row_shape or _torch_dtype(part) != self.dtype:
                raise ValueError(
                    f"part {i} has rows {tuple(part.shape[1:])} of {_torch_dtype(part)}; "
                    f"part 0 has {self.row_shape} of {self.dtype}"
                )
        self._starts = np.cumsum([0, *(len(p) for p in self._parts)])

    @classmethod
    def of(cls, data: Rows | Part) -> Rows:
        """`data` itself when it is Rows, else one part."""
        return data if isinstance(data, Rows) else cls([data])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    def __repr__(self) -> str:
        return f"Rows({len(self._parts)} parts, shape {self.shape}, {self.dtype})"

    def __getitem__(self, index: slice | torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """The rows at `index` (a slice, or integer positions in any order) as a new tensor."""
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._range(start, max(start, stop))
            index = torch.arange(start, stop, step)
        idx = torch.as_tensor(index, dtype=torch.int64)
        if idx.ndim != 1:
            raise IndexError(f"Rows takes a slice or 1-D positions, got shape {tuple(idx.shape)}")
        n = len(self)
        idx = torch.where(idx < 0, idx + n, idx)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"row index out of range for {n} rows")
        out = torch.empty((len(idx), *self.row_shape), dtype=self.dtype)
        owner = np.searchsorted(self._starts, idx.numpy(), side="right") - 1
        for k in np.unique(owner).tolist():
            at = torch.from_numpy(owner == k)
            out[at] = self._take(k, idx[at] - int(self._starts[k]))
        return out

    def batches(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive batches of `size` rows, in order."""
        for start in range(0, len(self), size):
            yield self[start : start + size]

    def _take(self, k: int, local: torch.Tensor) -> torch.Tensor:
        part = self._parts[k]
        if isinstance(part, torch.Tensor):
            return part[local]
        # fancy indexing copies the rows out of the map: only these pages are read
        return torch.from_numpy(np.ascontiguousarray(part[local.numpy()]))

    def _range(self, start: int, stop: int) -> torch.Tensor:
        pieces = []
        for k, part in enumerate(self._parts):
            lo, hi = max(start, int(self._starts[k])), min(stop, int(self._starts[k + 1]))
            if lo >= hi:
                continue
            a, b = lo - int(self._starts[k]), hi - int(self._starts[k])
            # a memory map's slice is a read-only view of the file: copy it into a tensor of its own
            pieces.append(
                part[a:b] if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part[a:b]))
            )
        if not pieces:
            return torch.empty((0, *self.row_shape), dtype=self.dtype)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

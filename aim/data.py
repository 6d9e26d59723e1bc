"""Encoded columns -> contiguous tensors, once; batches are slices of them.

The training loop never touches a per-sample ``__getitem__``: an epoch is one gather of the whole
dataset by a seeded permutation, then views ``[start:stop]`` of the permuted tensors. Codes stay
int32 (half the memory of int64; ``F.embedding`` takes them as they are).

Field codes follow the data contract of ``tasks/encode.py``: 0 is padding, 1 out-of-vocabulary,
2 missing, real values from 3. Multi-valued fields are padded with 0 to their ``max_length``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

PADDING = 0


@dataclass(frozen=True)
class FieldSpec:
    """What a model needs to know of one field: its name, vocabulary size and shape."""

    name: str
    vocab_size: int
    max_length: int = 1  # > 1 only for multi-valued fields: codes padded to this length
    multi_valued: bool = False

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(f"field {self.name!r}: vocab_size must be >= 1, got {self.vocab_size}")
        if self.multi_valued and self.max_length < 1:
            raise ValueError(f"field {self.name!r}: max_length must be >= 1, got {self.max_length}")


@dataclass
class CTRData:
    """Codes of every field plus the labels, as tensors.

    ``single`` holds the single-valued fields side by side ([N, n_single], int32, in the order of
    ``fields`` with the multi-valued ones left out); ``multi`` holds one padded [N, L] tensor per
    multi-valued field. A batch is a ``CTRData`` too.
    """

    fields: tuple[FieldSpec, ...]
    single: Tensor
    multi: tuple[Tensor, ...]
    label: Tensor

    def __len__(self) -> int:
        return self.label.shape[0]

    @property
    def device(self) -> torch.device:
        return self.label.device

    def to(self, device: torch.device | str) -> CTRData:
        return CTRData(
            self.fields, self.single.to(device), tuple(m.to(device) for m in self.multi), self.label.to(device)
        )

    def take(self, index: Tensor) -> CTRData:
        """Rows ``index`` gathered into new contiguous tensors."""
        return CTRData(
            self.fields,
            self.single.index_select(0, index),
            tuple(m.index_select(0, index) for m in self.multi),
            self.label.index_select(0, index),
        )

    def slice(self, start: int, stop: int) -> CTRData:
        """Rows ``start:stop`` as views: no copy."""
        return CTRData(
            self.fields, self.single[start:stop], tuple(m[start:stop] for m in self.multi), self.label[start:stop]
        )

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[CTRData]:
        """Batches of ``batch_size`` rows (the last may be smaller); shuffled by one permutation per call."""
        data = self
        if shuffle:
            perm = torch.randperm(len(self), generator=generator, device="cpu").to(self.device)
            data = self.take(perm)
        for start in range(0, len(data), batch_size):
            yield data.slice(start, start + batch_size)


def _padded(column: pa.ChunkedArray | pa.Array, max_length: int, name: str) -> np.ndarray:
    """A list<int> column -> [N, max_length] int32, padded with 0 and truncated at ``max_length``."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if column.null_count:
        raise ValueError(f"field {name!r}: {column.null_count} null lists (encode writes [] for an empty value)")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int32)
    out = np.zeros((len(column), max_length), dtype=np.int32)
    rows = np.repeat(np.arange(len(column)), lengths)
    starts = np.cumsum(lengths) - lengths
    positions = np.arange(len(values)) - np.repeat(starts, lengths)
    keep = positions < max_length
    out[rows[keep], positions[keep]] = values[keep]
    return out


def from_arrow(table: pa.Table, fields: Sequence[FieldSpec], label: str = "label") -> CTRData:
    """Build tensors from an encoded table (int32 codes; list<int32> for multi-valued fields)."""
    missing = [f.name for f in fields if f.name not in table.column_names]
    if label not in table.column_names:
        missing.append(label)
    if missing:
        raise ValueError(f"encoded table lacks columns {missing}; it has {table.column_names}")
    single_fields = [f for f in fields if not f.multi_valued]
    single = np.empty((table.num_rows, len(single_fields)), dtype=np.int32)
    for j, f in enumerate(single_fields):
        single[:, j] = table.column(f.name).to_numpy()
    multi = tuple(
        torch.from_numpy(_padded(table.column(f.name), f.max_length, f.name)) for f in fields if f.multi_valued
    )
    y = table.column(label).to_numpy().astype(np.float32)
    return CTRData(tuple(fields), torch.from_numpy(single), multi, torch.from_numpy(y))


def concat(parts: Sequence[CTRData]) -> CTRData:
    """Rows of several datasets with the same fields, one after another."""
    return CTRData(
        parts[0].fields,
        torch.cat([p.single for p in parts]),
        tuple(torch.cat(ms) for ms in zip(*(p.multi for p in parts), strict=True)),
        torch.cat([p.label for p in parts]),
    )

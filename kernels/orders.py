"""A batch of orders as numpy columns, the input of the order-feature kernel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kernels._checks import B1, F8, I8, check_array

#: Column name -> (dtype, number of columns of a 2-D column, or 0 for a 1-D column).
COLUMN_LAYOUT: dict[str, tuple[np.dtype[Any], int]] = {
    "t_ns": (I8, 0),
    "strategy": (B1, 0),
    "action": (B1, 0),
    "option_type": (B1, 0),
    "quantity": (F8, 0),
    "premium": (F8, 0),
    "predicted": (F8, 0),
    "price": (F8, 0),
    "strikes": (F8, 4),
    "n_strikes": (B1, 0),
    "risk": (F8, 0),
    "reward": (F8, 0),
    "short_term": (F8, 0),
    "long_term": (F8, 0),
    "expected_move": (F8, 0),
    "low": (F8, 0),
    "high": (F8, 0),
    "target1": (F8, 0),
    "target2": (F8, 0),
    "bids": (F8, 4),
    "asks": (F8, 4),
}

#: Columns grouped by layout, so :meth:`OrderColumns.empty` allocates one block per group.
_GROUPS: dict[tuple[np.dtype[Any], int], tuple[str, ...]] = {
    layout: tuple(name for name, other in COLUMN_LAYOUT.items() if other == layout)
    for layout in dict.fromkeys(COLUMN_LAYOUT.values())
}

ACTION_BUY = 0
ACTION_SELL = 1
OPTION_CALL = 0
OPTION_PUT = 1


@dataclass(slots=True)
class OrderColumns:
    """A batch of ``n`` orders, one C-contiguous numpy array per field.

    Missing numbers are NaN. Codes: ``strategy`` indexes
    :data:`kernels.registry.STRATEGIES`; ``action`` 0 = BUY, 1 = SELL; ``option_type``
    0 = CALL, 1 = PUT.

    Attributes:
        t_ns: int64 decision time, UTC epoch nanoseconds.
        strategy: int8 strategy code 0..3.
        action: int8, 0 = BUY, 1 = SELL.
        option_type: int8, 0 = CALL, 1 = PUT.
        quantity: float64 number of structures.
        premium: float64 limit price of the structure, in points.
        predicted: float64 Magic8 predicted close.
        price: float64 underlying price; the pipeline fills the latest close where absent.
        strikes: float64 (n, 4), sorted ascending, NaN-padded.
        n_strikes: int8 number of strikes given: 0, 2, 3 or 4.
        risk: float64 max loss in dollars as given by the order, NaN when absent.
        reward: float64 max profit in dollars as given by the order, NaN when absent.
        short_term: float64 delta-sheet short-term prediction.
        long_term: float64 delta-sheet long-term prediction.
        expected_move: float64 trades-sheet expected move.
        low: float64 trades-sheet low.
        high: float64 trades-sheet high.
        target1: float64 trades-sheet first target.
        target2: float64 trades-sheet second target.
        bids: float64 (n, 4) per-leg bids.
        asks: float64 (n, 4) per-leg asks.
    """

    t_ns: np.ndarray
    strategy: np.ndarray
    action: np.ndarray
    option_type: np.ndarray
    quantity: np.ndarray
    premium: np.ndarray
    predicted: np.ndarray
    price: np.ndarray
    strikes: np.ndarray
    n_strikes: np.ndarray
    risk: np.ndarray
    reward: np.ndarray
    short_term: np.ndarray
    long_term: np.ndarray
    expected_move: np.ndarray
    low: np.ndarray
    high: np.ndarray
    target1: np.ndarray
    target2: np.ndarray
    bids: np.ndarray
    asks: np.ndarray

    if not TYPE_CHECKING:
        # Hidden from type checkers, which would otherwise accept any attribute name.
        def __setattr__(self, name: str, value: Any) -> None:
            """Check a column's dtype, dimensions and contiguity as it is assigned.

            PERF: checking here, once per assignment, lets :func:`kernels.trade.order_features`
            skip a per-call Python loop over 21 columns (~6 µs); the kernel checks lengths.

            Raises:
                ValueError: Naming the column.
            """
            layout = COLUMN_LAYOUT.get(name)
            if layout is None:
                raise AttributeError(f"OrderColumns has no column {name!r}")
            dtype, width = layout
            check_array(name, value, dtype, width=width)
            object.__setattr__(self, name, value)

    @classmethod
    def empty(cls, n: int) -> OrderColumns:
        """Allocate a batch of ``n`` orders with every number missing.

        Integer columns start at 0 (time 0, Butterfly, BUY, CALL, no strikes) and
        ``quantity`` at 1; float columns start at NaN.

        Args:
            n: Number of orders.

        Returns:
            The new batch, ready to be filled column by column.

        Raises:
            ValueError: If ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        # PERF: one block per (dtype, width) and a row view per column: 4 allocations
        # instead of 21. Each view is C-contiguous because it is a leading-axis slice.
        blocks: dict[tuple[np.dtype[Any], int], np.ndarray] = {}
        for layout in _GROUPS:
            dtype, width = layout
            shape = (len(_GROUPS[layout]), n, width) if width else (len(_GROUPS[layout]), n)
            block = np.empty(shape, dtype=dtype)
            block.fill(np.nan if dtype == F8 else 0)
            blocks[layout] = block
        batch = cls.__new__(cls)
        for layout, names in _GROUPS.items():
            for position, name in enumerate(names):
                # Fresh views of the right layout: the per-assignment check is not needed.
                object.__setattr__(batch, name, blocks[layout][position])
        batch.quantity[:] = 1.0
        return batch

    def __len__(self) -> int:
        """Return the number of orders."""
        return int(self.t_ns.shape[0])

    def validate(self) -> None:
        """Check every column's type, dtype, shape, length and contiguity.

        Values (codes, strike counts, time range) are checked by the kernel, which reads
        them anyway.

        Raises:
            ValueError: Naming the first bad column.
        """
        n = len(self)
        for name, (dtype, width) in COLUMN_LAYOUT.items():
            check_array(name, getattr(self, name), dtype, length=n, width=width)

"""Recorded bars replayed from Parquet or CSV files, one per symbol, for backtests."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from providers.base import BAR_NS, BAR_SCHEMA, MarketSnapshot, NoMarketData, ProviderError
from providers.calendar import NY, to_epoch_ns

#: Accepted names of the time column, first match wins; times are bar starts.
TIME_COLUMNS = ("start", "time", "date", "datetime", "timestamp")
SUFFIXES = (".parquet", ".csv")
_OFFSET = r"(Z|[+-]\d{2}:?\d{2})$"


@dataclass(frozen=True, slots=True)
class _Tape:
    """One symbol's bars and their starts (epoch ns) for the as-of search."""

    frame: pl.DataFrame
    starts: np.ndarray


def read_bars(path: Path) -> pl.DataFrame:
    """Read one bar file into :data:`~providers.base.BAR_SCHEMA` columns, sorted by start.

    The time column (``start``, ``time``, ``date``, ``datetime`` or ``timestamp``) holds bar
    starts: zone-aware datetimes, ISO-8601 strings with an offset, or epoch seconds /
    milliseconds / nanoseconds. Naive times are refused rather than guessed. ``volume`` is
    optional. Duplicate starts keep the last row.

    Raises:
        ProviderError: unreadable file, no time column, naive times or missing prices.
    """
    try:
        if path.suffix == ".parquet":
            raw = pl.read_parquet(path)
        else:
            raw = pl.read_csv(path, infer_schema_length=0)  # all strings: parsed below
    except (OSError, pl.exceptions.PolarsError) as ex:
        raise ProviderError(f"replay file {path} cannot be read: {ex}") from ex
    columns = {name.lower(): name for name in raw.columns}
    time_column = next((columns[name] for name in TIME_COLUMNS if name in columns), None)
    if time_column is None:
        raise ProviderError(f"replay file {path} has no time column (one of {TIME_COLUMNS})")
    missing = [name for name in ("open", "high", "low", "close") if name not in columns]
    if missing:
        raise ProviderError(f"replay file {path} lacks columns {missing}")
    start = _starts(raw[time_column], path)
    prices = [
        raw[columns[name]].cast(pl.Float64, strict=False).alias(name)
        for name in ("open", "high", "low", "close")
    ]
    volume = (
        raw[columns["volume"]].cast(pl.Float64, strict=False)
        if "volume" in columns
        else pl.Series(values=[None] * raw.height, dtype=pl.Float64)
    )
    frame = pl.DataFrame([start.alias("start"), *prices, volume.alias("volume")])
    frame = (
        frame.filter(pl.col("close").is_finite() & (pl.col("close") > 0))
        .unique("start", keep="last")
        .sort("start")
        .with_columns(pl.col("volume").fill_null(float("nan")))
    )
    return frame.cast(BAR_SCHEMA)  # type: ignore[arg-type]


def _starts(column: pl.Series, path: Path) -> pl.Series:
    dtype = column.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            raise ProviderError(
                f"replay file {path}: column {column.name!r} has no time zone; "
                "store bar starts in UTC with their zone"
            )
        return column.dt.convert_time_zone("UTC").cast(BAR_SCHEMA["start"])
    if dtype.is_integer() or dtype.is_float():
        return _epoch(column.cast(pl.Int64))
    text = column.cast(pl.String)
    if text.str.contains(r"^\d+$").all():
        return _epoch(text.cast(pl.Int64))
    naive = ~text.str.contains(_OFFSET)
    if naive.any():
        raise ProviderError(
            f"replay file {path}: time {text.filter(naive)[0]!r} has no UTC offset; "
            "write ISO-8601 times with an offset (2024-03-04T14:30:00+00:00)"
        )
    try:
        return text.str.to_datetime(time_zone="UTC").cast(BAR_SCHEMA["start"])
    except pl.exceptions.PolarsError as ex:
        raise ProviderError(f"replay file {path}: unreadable times: {ex}") from ex


def _epoch(values: pl.Series) -> pl.Series:
    # Epoch seconds, milliseconds or nanoseconds, told apart by magnitude.
    largest = values.abs().max()
    scale = 1
    if isinstance(largest, int):
        if largest < 10**11:
            scale = 1_000_000_000
        elif largest < 10**14:
            scale = 1_000_000
    return (values * scale).cast(BAR_SCHEMA["start"])


def write_bars(
    folder: Path, symbol: str, frame: pl.DataFrame, fmt: Literal["parquet", "csv"] = "parquet"
) -> Path:
    """Write one symbol's bars where :class:`ReplayProvider` will find them.

    Args:
        folder: Replay folder (created if missing).
        symbol: Ticker; the file is ``{SYMBOL}.parquet`` or ``{SYMBOL}.csv``.
        frame: Bars with :data:`~providers.base.BAR_SCHEMA` columns.
        fmt: File format; CSV times are written ISO-8601 with offset.

    Returns:
        The file written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{symbol.upper()}.{fmt}"
    if fmt == "parquet":
        frame.write_parquet(path)
    else:
        frame.with_columns(pl.col("start").dt.strftime("%Y-%m-%dT%H:%M:%S%:z")).write_csv(path)
    return path


class ReplayProvider:
    """Bars from ``{SYMBOL}.parquet`` or ``{SYMBOL}.csv`` files in one folder.

    The as-of time is the order's ``timestamp``, so a replayed day gives the same snapshot,
    and therefore the same prediction, every time. Only bars with start + 5 min <= as-of
    are returned.
    """

    name = "replay"

    def __init__(self, path: Path, symbols: Sequence[str] | None = None) -> None:
        """Point the provider at a folder; files are read by :meth:`start`.

        Args:
            path: Folder of bar files.
            symbols: Tickers to load (default: every file in the folder).
        """
        self.path = Path(path)
        self.symbols = tuple(symbol.upper() for symbol in symbols) if symbols else None
        self._tapes: dict[str, _Tape] = {}

    async def start(self) -> None:
        """Read the files (in a worker thread).

        Raises:
            ProviderError: the folder is missing, holds no bar file, or a file is bad.
        """
        await asyncio.to_thread(self.load)

    def load(self) -> None:
        """Read every bar file of the folder synchronously; see :meth:`start`."""
        if not self.path.is_dir():
            raise ProviderError(f"replay folder {self.path} does not exist")
        files: dict[str, Path] = {}
        for suffix in SUFFIXES:
            for file in sorted(self.path.glob(f"*{suffix}")):
                files.setdefault(file.stem.upper(), file)
        wanted = self.symbols or tuple(files)
        if not any(symbol in files for symbol in wanted):
            raise ProviderError(f"replay folder {self.path} has no bar files for {list(wanted)}")
        self.load_frames({symbol: read_bars(files[symbol]) for symbol in wanted if symbol in files})

    def load_frames(self, frames: Mapping[str, pl.DataFrame]) -> None:
        """Serve these bars (BAR_SCHEMA frames sorted by start) instead of files."""
        self._tapes = {
            symbol.upper(): _Tape(
                frame, frame["start"].dt.epoch("ns").to_numpy().astype(np.int64, copy=False)
            )
            for symbol, frame in frames.items()
        }

    async def close(self) -> None:
        """Release the loaded bars."""
        self._tapes = {}

    async def snapshot(self, symbol: str, as_of: datetime, bars: int) -> MarketSnapshot:
        """Return up to ``bars`` recorded bars of ``symbol`` completed by ``as_of``.

        Raises:
            NoMarketData: no file for the symbol, or no bar completed by ``as_of``.
        """
        ticker = symbol.upper()
        tape = self._tapes.get(ticker)
        if tape is None:
            raise NoMarketData(self.name, ticker)
        cut = int(np.searchsorted(tape.starts, to_epoch_ns(as_of) - BAR_NS, side="right"))
        if cut == 0:
            raise NoMarketData(self.name, ticker)
        count = min(bars, cut)
        return MarketSnapshot(
            symbol=ticker,
            bars=tape.frame.slice(cut - count, count),
            as_of=datetime.fromtimestamp(int(tape.starts[cut - 1]) // 1_000_000_000, UTC),
            source=self.name,
        )

    def sessions(self) -> list[date]:
        """New York dates that have at least one bar, in any symbol, oldest first."""
        days: set[date] = set()
        for tape in self._tapes.values():
            days.update(
                tape.frame["start"].dt.convert_time_zone(str(NY)).dt.date().unique().to_list()
            )
        return sorted(days)

    def health(self) -> dict[str, Any]:
        """Describe the loaded files for ``GET /health``."""
        return {
            "name": self.name,
            "state": "up" if self._tapes else "empty",
            "path": str(self.path),
            "symbols": {
                symbol: {
                    "bars": tape.frame.height,
                    "first": tape.frame["start"][0].isoformat() if tape.frame.height else None,
                    "last": tape.frame["start"][-1].isoformat() if tape.frame.height else None,
                }
                for symbol, tape in self._tapes.items()
            },
        }

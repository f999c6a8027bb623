"""The embedded market simulator: deterministic, correlated 5-minute bars for every symbol."""

from __future__ import annotations

import math
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import polars as pl

from providers.base import BAR_SCHEMA, MarketSnapshot, NoMarketData
from providers.calendar import (
    BAR,
    BARS_PER_SESSION,
    is_trading_day,
    last_completed_bar_position,
    next_trading_day,
    previous_trading_day,
    session_bar_starts,
    session_open,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_SYMBOLS: tuple[str, ...] = (
    "SPX",
    "SPY",
    "XSP",
    "NDX",
    "QQQ",
    "RUT",
    "AAPL",
    "TSLA",
    "VIX",
)
VIX: Final = "VIX"
MARKET: Final = "SPX"


@dataclass(frozen=True, slots=True)
class _Factor:
    """A symbol with its own level process whose shocks load on the market (SPX) shock."""

    center: float
    vol_multiplier: float
    rho: float
    base_volume: float


@dataclass(frozen=True, slots=True)
class _Tracker:
    """A symbol quoted as its parent divided by a fixed divisor, with optional tracking noise."""

    parent: str
    divisor: float
    tracking_noise: float
    base_volume: float


_FACTORS: Final[dict[str, _Factor]] = {
    MARKET: _Factor(center=5_700.0, vol_multiplier=1.0, rho=1.0, base_volume=2.0e6),
    "NDX": _Factor(center=20_000.0, vol_multiplier=1.25, rho=0.9, base_volume=4.0e5),
    "RUT": _Factor(center=2_150.0, vol_multiplier=1.35, rho=0.8, base_volume=1.5e5),
    "AAPL": _Factor(center=195.0, vol_multiplier=1.6, rho=0.6, base_volume=6.0e5),
    "TSLA": _Factor(center=240.0, vol_multiplier=3.2, rho=0.4, base_volume=1.2e6),
}
_TRACKERS: Final[dict[str, _Tracker]] = {
    "SPY": _Tracker(parent=MARKET, divisor=10.0, tracking_noise=1.5e-4, base_volume=7.0e5),
    "XSP": _Tracker(parent=MARKET, divisor=10.0, tracking_noise=0.0, base_volume=3.0e3),
    "QQQ": _Tracker(parent="NDX", divisor=41.0, tracking_noise=2.0e-4, base_volume=4.0e5),
}
_VIX_BASE_VOLUME = 1.0e4

# Separate random streams, so daily levels and intraday paths never share draws.
_DAILY_STREAM = 1
_INTRADAY_STREAM = 2
# Daily shocks are drawn per block of days, so a day's levels do not depend on how far the
# process had been extended when it was asked for.
_BLOCK_DAYS = 64
_TRADING_DAYS_PER_YEAR = 252

# VIX = floor + exp(x), x an OU process: the floor keeps VIX above ~9 and exp gives real spikes'
# upward skew (stationary median ~17, 1st-99th percentile roughly 11-38).
_VIX_FLOOR = 9.0
_VIX_X_MEAN = math.log(8.0)
_VIX_REVERSION = 0.035  # per day: a ~20-day half-life
_VIX_SESSION_VOL = 0.13
_VIX_GAP_VOL = 0.05
_VIX_MARKET_RHO = -0.8
_VIX_BAR_VOL = _VIX_SESSION_VOL / math.sqrt(BARS_PER_SESSION)

# Levels revert (~14-day half-life) to a center moved by a slow 4-year cycle, which keeps SPX
# around 5,000-6,500 however far from the epoch a caller asks, instead of wandering like a GBM.
_LEVEL_REVERSION = 0.05
_TREND_AMPLITUDE = 0.05
_TREND_PERIOD_DAYS = 4 * _TRADING_DAYS_PER_YEAR
_GAP_VOL_RATIO = 0.35  # overnight move relative to the session's vol
_BAR_VOL_PER_VIX_POINT = 1.0 / 100.0 / math.sqrt(_TRADING_DAYS_PER_YEAR * BARS_PER_SESSION)
_WICK = 0.5  # bar range beyond open/close, in bar vols: makes high-low ~1.6 bar vols like BM
_VOLUME_NOISE = 0.35
_VOLUME_ACTIVITY = 0.3  # bigger moves trade more

# A snapshot is one slice of a frame holding this many sessions (>= 157 bars at any time).
_WINDOW_SESSIONS = 3

_PRICE_COLUMNS: Final = tuple(BAR_SCHEMA)[1:]


def _intraday_shapes() -> tuple[FloatArray, FloatArray]:
    """Return the per-bar vol multiplier (RMS 1) and volume multiplier (mean 1)."""
    position = np.arange(BARS_PER_SESSION, dtype=np.float64)
    centered = (position - (BARS_PER_SESSION - 1) / 2) / ((BARS_PER_SESSION - 1) / 2)
    # Vol is highest at the open, lowest at midday, up again into the close; RMS 1 keeps the
    # session's variance equal to VIX's.
    vol = 0.75 + 0.9 * centered**2 + 0.6 * np.exp(-position / 4.0)
    vol /= np.sqrt(np.mean(vol**2))
    # Volume adds the closing-auction spike.
    volume = 0.6 + 1.2 * centered**2 + 1.5 * np.exp(-(BARS_PER_SESSION - 1 - position) / 2.0)
    volume /= volume.mean()
    return vol, volume


_VOL_SHAPE, _VOLUME_SHAPE = _intraday_shapes()
_VIX_BRIDGE_WEIGHTS = np.cumsum(_VOL_SHAPE**2) / np.sum(_VOL_SHAPE**2)


def _symbol_key(symbol: str) -> int:
    """Return a stable integer naming ``symbol`` in random-stream seeds."""
    # crc32, not hash(): str hashes are salted per process and would break determinism.
    return zlib.crc32(symbol.encode())


def _generic_factor(symbol: str) -> _Factor:
    """Return the profile of a configured ticker that is not in the built-in catalogue."""
    # A configured symbol outside the catalogue still gets a stable, plausible stock profile.
    key = _symbol_key(symbol)
    return _Factor(
        center=20.0 + key % 481,
        vol_multiplier=1.2 + (key >> 10) % 201 / 100.0,
        rho=0.5,
        base_volume=5.0e5,
    )


def _trend(day_index: IntArray) -> FloatArray:
    """Return the slow log-level cycle of SPX on the given trading-day indices."""
    return _TREND_AMPLITUDE * np.sin(2.0 * np.pi * day_index / _TREND_PERIOD_DAYS)


class _DailyLevels:
    """Session open/close levels of every factor symbol and of VIX, day by day from the epoch.

    This cheap daily process is what joins sessions up: a session's intraday path is a bridge
    between its open and close here, so any day can be simulated alone, in any order.
    """

    def __init__(self, seed: int, factors: dict[str, _Factor]) -> None:
        self._seed = seed
        self.symbols = tuple(factors)
        self._keys = [_symbol_key(symbol) for symbol in self.symbols]
        self._log_center = np.log([factor.center for factor in factors.values()])
        self.multiplier = np.array([factor.vol_multiplier for factor in factors.values()])
        self.rho = np.array([factor.rho for factor in factors.values()])
        self.idiosyncratic = np.sqrt(1.0 - self.rho**2)
        self._vix_state = _VIX_X_MEAN
        self._level_state = np.zeros(len(self.symbols))
        self.vix_open = np.empty(0)
        self.vix_close = np.empty(0)
        self.log_open = np.empty((0, len(self.symbols)))
        self.log_close = np.empty((0, len(self.symbols)))

    def ensure(self, days: int) -> None:
        """Extend the process until it covers at least ``days`` trading days."""
        while self.vix_open.shape[0] < days:
            self._extend()

    def _extend(self) -> None:
        block = self.vix_open.shape[0] // _BLOCK_DAYS
        market = np.random.default_rng([self._seed, _DAILY_STREAM, block])
        market_shock, vix_own, market_gap, vix_gap = market.standard_normal((4, _BLOCK_DAYS))
        vix_shock = _VIX_MARKET_RHO * market_shock + math.sqrt(1 - _VIX_MARKET_RHO**2) * vix_own

        vix_input = (
            _VIX_REVERSION * _VIX_X_MEAN + _VIX_SESSION_VOL * vix_shock + _VIX_GAP_VOL * vix_gap
        )
        vix_open = np.empty(_BLOCK_DAYS)
        for day, step in enumerate(vix_input.tolist()):
            vix_open[day] = self._vix_state
            self._vix_state = (1.0 - _VIX_REVERSION) * self._vix_state + step
        vix_close = vix_open + _VIX_REVERSION * (_VIX_X_MEAN - vix_open)
        vix_close += _VIX_SESSION_VOL * vix_shock
        session_vol = (_VIX_FLOOR + np.exp(vix_open)) / 100.0 / math.sqrt(_TRADING_DAYS_PER_YEAR)

        own = np.stack(
            [
                np.random.default_rng([self._seed, _DAILY_STREAM, block, key]).standard_normal(
                    (2, _BLOCK_DAYS)
                )
                for key in self._keys
            ],
            axis=-1,
        )
        shock = self.rho * market_shock[:, None] + self.idiosyncratic * own[0]
        gap = self.rho * market_gap[:, None] + self.idiosyncratic * own[1]
        scale = session_vol[:, None] * self.multiplier
        session_move = scale * shock
        level_input = session_move + _GAP_VOL_RATIO * scale * gap
        # An elementwise recurrence rather than a matrix product: BLAS may sum in an order that
        # depends on how many symbols are simulated, and a symbol's bars must not.
        deviation = np.empty_like(level_input)
        for day in range(_BLOCK_DAYS):
            deviation[day] = self._level_state
            self._level_state = (1.0 - _LEVEL_REVERSION) * self._level_state + level_input[day]

        day_index = block * _BLOCK_DAYS + np.arange(_BLOCK_DAYS + 1)
        trend = _trend(day_index)[:, None] * self.multiplier
        log_open = self._log_center + trend[:-1] + deviation
        # The close carries the day's share of the reversion and of the trend, so that the next
        # open is exactly close + overnight gap.
        log_close = log_open + session_move - _LEVEL_REVERSION * deviation + np.diff(trend, axis=0)

        self.vix_open = np.concatenate([self.vix_open, vix_open])
        self.vix_close = np.concatenate([self.vix_close, vix_close])
        self.log_open = np.concatenate([self.log_open, log_open])
        self.log_close = np.concatenate([self.log_close, log_close])


def _bridge(
    start: FloatArray, end: FloatArray, steps: FloatArray, weights: FloatArray
) -> FloatArray:
    """Pin a random walk (last axis) to ``end`` while keeping its step-by-step noise."""
    walk = np.cumsum(steps, axis=-1)
    return start[..., None] + walk + weights * ((end - start)[..., None] - walk[..., -1:])


def _candles(
    log_start: FloatArray, log_close: FloatArray, bar_vol: FloatArray, wick_noise: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Return log open, high, low, close of bars whose log closes are ``log_close``."""
    log_open = np.concatenate([log_start[..., None], log_close[..., :-1]], axis=-1)
    wick = _WICK * bar_vol * np.abs(wick_noise)
    high = np.maximum(log_open, log_close) + wick[0]
    low = np.minimum(log_open, log_close) - wick[1]
    return log_open, high, low, log_close


def _volume(base: FloatArray | float, noise: FloatArray, activity: FloatArray) -> FloatArray:
    """Return whole-share bar volumes: intraday shape, lognormal noise, more on big moves."""
    lognormal = np.exp(_VOLUME_NOISE * noise - _VOLUME_NOISE**2 / 2)
    shares = base * _VOLUME_SHAPE * lognormal * (1.0 + _VOLUME_ACTIVITY * activity)
    return np.maximum(np.round(shares), 1.0)


@dataclass(frozen=True, slots=True)
class _Window:
    """Bars of one symbol over the last few sessions up to and including one session."""

    frame: pl.DataFrame
    offset: int  # row of the session's 09:30 bar
    from_first_session: bool  # nothing older exists


@dataclass(slots=True)
class _Session:
    """All simulated symbols' bars of one session, as arrays, plus lazily built frames."""

    day: date
    starts: IntArray
    bars: dict[str, FloatArray]  # symbol -> (5, 78): open, high, low, close, volume
    windows: dict[str, _Window] = field(default_factory=dict)


def _bar_frame(starts: IntArray, bars: FloatArray) -> pl.DataFrame:
    """Build a :data:`~providers.base.BAR_SCHEMA` frame from bar starts and a (5, n) array."""
    columns = [pl.Series("start", starts, dtype=pl.Int64).cast(BAR_SCHEMA["start"])]
    columns += [
        pl.Series(name, bars[row], dtype=BAR_SCHEMA[name])
        for row, name in enumerate(_PRICE_COLUMNS)
    ]
    return pl.DataFrame(columns)


class SyntheticProvider:
    """Deterministic simulator of SPX, its ETFs and minis, NDX, RUT, two stocks and VIX.

    Bars are a pure function of (seed, symbol, session): each session's randomness comes from
    its own seeded stream and its open/close levels from a cheap daily process run from the
    epoch, so results do not depend on call order, cache state or the configured symbol set.

    Model: SPX's 5-minute return vol is VIX/100 annualised over 252×78 bars, shaped into an
    intraday U; VIX is an OU process in log(VIX − 9) whose shocks are −0.8 correlated with SPX's;
    NDX, RUT, AAPL, TSLA load on the SPX shock (ρ 0.9, 0.8, 0.6, 0.4) with higher vol; SPY and
    QQQ are SPX/10 and NDX/41 with tiny tracking noise, XSP is exactly SPX/10. Regular trading
    hours on weekdays only; exchange holidays are not modelled.
    """

    name = "synthetic"

    def __init__(
        self,
        seed: int = 8,
        symbols: Sequence[str] = DEFAULT_SYMBOLS,
        epoch: date = date(2020, 1, 2),
        *,
        cache_days: int = 64,
    ) -> None:
        """Configure the simulator; nothing is simulated until asked for.

        Args:
            seed: Non-negative seed; the same seed always gives the same bars.
            symbols: Tickers to serve. Ones outside the built-in catalogue get a generic stock
                profile derived from the ticker.
            epoch: First day of history; earlier as-of times have no data.
            cache_days: Sessions kept in memory (all symbols each), least recently used out.

        Raises:
            ValueError: negative seed, no symbols (or a bare string), or a cache too small for
                one snapshot window.
        """
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if cache_days < _WINDOW_SESSIONS:
            raise ValueError(f"cache_days must be at least {_WINDOW_SESSIONS}, got {cache_days}")
        if isinstance(symbols, str):
            # A bare string is a Sequence[str] too, and would be served letter by letter.
            raise ValueError(f"symbols must be a sequence of tickers, got {symbols!r}")
        served = tuple(dict.fromkeys(symbol.strip().upper() for symbol in symbols))
        if not served or "" in served:
            raise ValueError(f"symbols must be non-empty tickers, got {list(symbols)!r}")
        self._seed = seed
        self._symbols = served
        self._served = frozenset(served)
        self._first_session = epoch if is_trading_day(epoch) else next_trading_day(epoch)
        self._cache_days = cache_days

        factors = {MARKET: _FACTORS[MARKET]}
        self._trackers: dict[str, _Tracker] = {}
        for symbol in served:
            if symbol in _TRACKERS:
                self._trackers[symbol] = _TRACKERS[symbol]
                factors[_TRACKERS[symbol].parent] = _FACTORS[_TRACKERS[symbol].parent]
            elif symbol != VIX:
                factors[symbol] = _FACTORS.get(symbol) or _generic_factor(symbol)
        factor_names = tuple(factors)
        self._levels = _DailyLevels(seed, factors)
        self._multiplier = self._levels.multiplier[:, None]
        self._rho = self._levels.rho[:, None]
        self._idiosyncratic = self._levels.idiosyncratic[:, None]
        self._base_volume = np.array([factors[symbol].base_volume for symbol in factor_names])
        self._sessions: OrderedDict[date, _Session] = OrderedDict()
        self._lock = threading.RLock()

    @property
    def symbols(self) -> tuple[str, ...]:
        """Tickers this provider serves, upper case, in configured order."""
        return self._symbols

    @property
    def first_session(self) -> date:
        """The first session with bars (the epoch, or the next weekday after it)."""
        return self._first_session

    async def start(self) -> None:
        """Do nothing: the simulator has no connections."""

    async def close(self) -> None:
        """Do nothing: the simulator has no connections."""

    def health(self) -> dict[str, Any]:
        """Describe the simulator for ``GET /health``."""
        return {
            "name": self.name,
            "state": "up",
            "seed": self._seed,
            "days_cached": len(self._sessions),
        }

    async def snapshot(self, symbol: str, as_of: datetime, bars: int) -> MarketSnapshot:
        """Return up to ``bars`` completed bars of ``symbol`` as of ``as_of``.

        Args:
            symbol: Ticker (case-insensitive).
            as_of: Timezone-aware decision time; only bars with start + 5 min <= as_of count.
            bars: Maximum number of bars, at least 1.

        Returns:
            The newest completed bars, walking back across nights and weekends as needed.

        Raises:
            NoMarketData: unknown symbol, or ``as_of`` before the first session's first bar.
            ValueError: ``as_of`` is naive or ``bars`` < 1.
        """
        # PERF: computing in the event loop is cheaper than a thread hop; a warm call is a few
        # microseconds of Python plus one polars slice.
        return self.snapshot_sync(symbol, as_of, bars)

    def snapshot_sync(self, symbol: str, as_of: datetime, bars: int) -> MarketSnapshot:
        """Do what :meth:`snapshot` does, synchronously (for the demo-model builder and tests)."""
        if bars < 1:
            raise ValueError(f"bars must be at least 1, got {bars}")
        ticker = self._ticker(symbol)
        day, index = last_completed_bar_position(as_of)
        if day < self._first_session:
            raise NoMarketData(self.name, ticker)
        session = self._session(day)
        window = self._window(session, ticker)
        available = window.offset + index + 1
        if bars <= available or window.from_first_session:
            frame = window.frame.slice(max(available - bars, 0), min(bars, available))
        else:
            frame = self._long_history(ticker, session, index, bars)
        return MarketSnapshot(
            symbol=ticker, bars=frame, as_of=session_open(day) + index * BAR, source=self.name
        )

    def day_bars(self, day: date) -> dict[str, pl.DataFrame]:
        """Return every served symbol's 78 bars of the session on ``day``.

        Args:
            day: Session date (New York).

        Returns:
            Symbol → frame with :data:`~providers.base.BAR_SCHEMA`; frames are empty when
            ``day`` is not a trading day or is before the first session.
        """
        if not is_trading_day(day) or day < self._first_session:
            return {symbol: pl.DataFrame(schema=BAR_SCHEMA) for symbol in self._symbols}
        session = self._session(day)
        result = {}
        for symbol in self._symbols:
            window = self._window(session, symbol)
            result[symbol] = window.frame.slice(window.offset, BARS_PER_SESSION)
        return result

    def settlement(self, symbol: str, day: date) -> float:
        """Return the final (15:55 bar) close of ``symbol`` in the session on ``day``.

        Raises:
            NoMarketData: unknown symbol, or no session on ``day``.
        """
        ticker = self._ticker(symbol)
        if not is_trading_day(day) or day < self._first_session:
            raise NoMarketData(self.name, ticker)
        return float(self._session(day).bars[ticker][3, -1])

    def _ticker(self, symbol: str) -> str:
        ticker = symbol.upper()
        if ticker not in self._served:
            raise NoMarketData(self.name, ticker)
        return ticker

    def _session(self, day: date) -> _Session:
        # One lock around the LRU: the demo builder may share a provider across threads, and
        # an uncontended acquire costs ~0.1 µs.
        with self._lock:
            session = self._sessions.get(day)
            if session is not None:
                self._sessions.move_to_end(day)
                return session
            session = self._simulate(day)
            self._sessions[day] = session
            if len(self._sessions) > self._cache_days:
                self._sessions.popitem(last=False)
            return session

    def _window(self, session: _Session, symbol: str) -> _Window:
        window = session.windows.get(symbol)
        if window is None:
            sessions = [session]
            day = session.day
            while len(sessions) < _WINDOW_SESSIONS and day > self._first_session:
                day = previous_trading_day(day)
                sessions.append(self._session(day))
            sessions.reverse()
            window = _Window(
                frame=_bar_frame(
                    np.concatenate([part.starts for part in sessions]),
                    np.concatenate([part.bars[symbol] for part in sessions], axis=1),
                ),
                offset=BARS_PER_SESSION * (len(sessions) - 1),
                from_first_session=sessions[0].day == self._first_session,
            )
            session.windows[symbol] = window
        return window

    def _long_history(self, symbol: str, session: _Session, index: int, bars: int) -> pl.DataFrame:
        # Rare path: more bars than a window holds; stitch sessions without caching them.
        starts = [session.starts[: index + 1]]
        arrays = [session.bars[symbol][:, : index + 1]]
        total = index + 1
        day = session.day
        while total < bars and day > self._first_session:
            day = previous_trading_day(day)
            older = self._session(day)
            starts.append(older.starts)
            arrays.append(older.bars[symbol])
            total += BARS_PER_SESSION
        keep = min(bars, total)
        return _bar_frame(
            np.concatenate(starts[::-1])[-keep:],
            np.ascontiguousarray(np.concatenate(arrays[::-1], axis=1)[:, -keep:]),
        )

    def _day_index(self, day: date) -> int:
        # Trading days from the first session to ``day``: whole weeks, then the leftover days.
        weeks, leftover = divmod((day - self._first_session).days, 7)
        start = self._first_session.weekday()
        return weeks * 5 + sum((start + offset) % 7 < 5 for offset in range(leftover))

    def _simulate(self, day: date) -> _Session:
        """Simulate every symbol's bars of one session from that session's own random stream."""
        day_index = self._day_index(day)
        levels = self._levels
        levels.ensure(day_index + 1)
        ordinal = day.toordinal()
        market = np.random.default_rng([self._seed, _INTRADAY_STREAM, ordinal])
        market_shock, vix_own = market.standard_normal((2, BARS_PER_SESSION))

        def own_noise(symbol: str, rows: int) -> FloatArray:
            stream = [self._seed, _INTRADAY_STREAM, ordinal, _symbol_key(symbol)]
            return np.random.default_rng(stream).standard_normal((rows, BARS_PER_SESSION))

        # VIX first: its path sets the market's bar-by-bar vol.
        vix_shock = _VIX_MARKET_RHO * market_shock + math.sqrt(1 - _VIX_MARKET_RHO**2) * vix_own
        vix_x_open = np.asarray(levels.vix_open[day_index])
        vix_x = _bridge(
            vix_x_open,
            np.asarray(levels.vix_close[day_index]),
            _VIX_BAR_VOL * _VOL_SHAPE * vix_shock,
            _VIX_BRIDGE_WEIGHTS,
        )
        vix_noise = own_noise(VIX, 3)
        vix_candles = _candles(vix_x_open, vix_x, _VIX_BAR_VOL * _VOL_SHAPE, vix_noise[:2])
        vix_open_levels = _VIX_FLOOR + np.exp(vix_candles[0])
        bars = {
            VIX: np.stack(
                [_VIX_FLOOR + np.exp(price) for price in vix_candles]
                + [_volume(_VIX_BASE_VOLUME, vix_noise[2], np.abs(vix_shock))]
            )
        }

        bar_vol = vix_open_levels * _BAR_VOL_PER_VIX_POINT * _VOL_SHAPE
        bridge_weights = np.cumsum(bar_vol**2) / np.sum(bar_vol**2)
        noise = np.stack([own_noise(symbol, 4) for symbol in levels.symbols], axis=1)
        factor_vol = self._multiplier * bar_vol
        steps = factor_vol * (self._rho * market_shock + self._idiosyncratic * noise[0])
        log_open = levels.log_open[day_index]
        log_close = _bridge(log_open, levels.log_close[day_index], steps, bridge_weights)
        candles = np.exp(np.stack(_candles(log_open, log_close, factor_vol, noise[1:3])))
        activity = np.abs(steps) / factor_vol
        volume = _volume(self._base_volume[:, None], noise[3], activity)
        for row, symbol in enumerate(levels.symbols):
            bars[symbol] = np.vstack([candles[:, row], volume[row]])

        for symbol, tracker in self._trackers.items():
            parent = bars[tracker.parent][:4] / tracker.divisor
            tracker_noise = own_noise(symbol, 2)
            if tracker.tracking_noise:
                parent = parent * np.exp(tracker.tracking_noise * tracker_noise[0])
            parent_activity = activity[levels.symbols.index(tracker.parent)]
            tracker_volume = _volume(tracker.base_volume, tracker_noise[1], parent_activity)
            bars[symbol] = np.vstack([parent, tracker_volume])

        return _Session(day=day, starts=session_bar_starts(day), bars=bars)

"""The data plane: orders → market snapshots → features → onnxruntime → decisions. No HTTP here."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np

from kernels.assemble import assemble
from kernels.market import market_block, snapshot_arrays, vix_block
from kernels.registry import MARKET_INDICATORS, ORDER_FEATURES, STRATEGIES, FeatureRegistry
from kernels.trade import order_features, risk_reward

from .cache import TTLCache
from .errors import InvalidOrder, PayloadTooLarge
from .market import MarketData, ResolvedSnapshot
from .orders import (
    OrderBatch,
    OrderRejected,
    build_batch,
    canonical_strategy,
    parse_action,
    parse_option_type,
    parse_strikes,
)
from .repository import LoadedModel, ModelSet
from .schema import BatchMetrics, BatchResponse, Order, Prediction, RiskRewardRequest

_N_IND = len(MARKET_INDICATORS)
_COL = {name: index for index, name in enumerate(ORDER_FEATURES)}
_RISK, _REWARD, _RATIO = _COL["risk"], _COL["reward"], _COL["risk_reward_ratio"]
_MONEY = np.array([_RISK, _REWARD, _RATIO], dtype=np.intp)
#: Interned market-view identities before the table is reset (tokens are never reused).
_MAX_VIEW_TOKENS = 4096


@dataclass(slots=True)
class Tally:
    """Cache counts of one batch (``batch_metrics``)."""

    feature_hits: int = 0
    feature_misses: int = 0
    prediction_hits: int = 0
    prediction_misses: int = 0
    market_data_hits: int = 0
    market_data_misses: int = 0


@dataclass(slots=True)
class MarketView:
    """What one group of orders (one as-of time) sees of the market.

    Attributes:
        vector: The market feature vector in ``FeatureRegistry.market_columns`` order.
        snapshots: Resolved snapshot per symbol (None when no provider has data).
        key: Hashable identity of the data used.
        token: A small integer standing for ``key`` in the prediction cache key.
        source: Provider name(s) the data came from.
        as_of: Start of the newest bar used.
        stale: Whether any snapshot used is stale.
    """

    vector: np.ndarray
    snapshots: dict[str, ResolvedSnapshot | None]
    key: tuple[Any, ...]
    token: int
    source: str | None
    as_of: datetime | None
    stale: bool


@dataclass(slots=True)
class StageTimes:
    """Seconds spent per pipeline stage in one batch (for metrics and benchmarks)."""

    validate: float = 0.0
    market_data: float = 0.0
    features: float = 0.0
    inference: float = 0.0
    decide: float = 0.0


@dataclass(slots=True)
class _Work:
    """The state of one batch as it moves through the stages."""

    batch: OrderBatch
    now: datetime
    answers: list[Prediction | None]
    routed: list[LoadedModel | None] = field(default_factory=list)
    views: list[MarketView] = field(default_factory=list)
    view_of_row: list[int] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    stages: StageTimes = field(default_factory=StageTimes)
    cache_keys: dict[int, tuple[Any, ...]] = field(default_factory=dict)

    def model(self, row: int) -> LoadedModel:
        """The model row ``row`` was routed to (only called for routed rows)."""
        model = self.routed[row]
        assert model is not None
        return model

    def view(self, row: int) -> MarketView:
        """The market view row ``row`` sees."""
        return self.views[self.view_of_row[row]]


class MarketFeatures:
    """Market feature vectors per as-of time: provider chain → kernels, with the block cache.

    Serving and the demo-model trainer both compute market features through this class.
    """

    def __init__(
        self, market: MarketData, registry: FeatureRegistry, cache: TTLCache[np.ndarray]
    ) -> None:
        self.market = market
        self.registry = registry
        self.cache = cache
        self._universe_index = {symbol: i for i, symbol in enumerate(registry.universe)}
        self._vix_offset = len(registry.universe) * _N_IND
        self._tokens: dict[tuple[Any, ...], int] = {}
        self._last_token = 0

    async def view(self, symbols: list[str], as_of: datetime, tally: Tally) -> MarketView:
        """Resolve ``symbols`` as of ``as_of`` and build the market feature vector."""
        hits_before, misses_before = self.market.cache.hits, self.market.cache.misses
        resolved = await self.market.resolve_many(symbols, as_of)
        tally.market_data_hits += self.market.cache.hits - hits_before
        tally.market_data_misses += self.market.cache.misses - misses_before
        vector = np.full(len(self.registry.market_columns), np.nan)
        t_ns = int(as_of.timestamp() * 1e6) * 1000
        clock = time.monotonic()
        pending: list[tuple[str, ResolvedSnapshot, tuple[Any, ...]]] = []
        for symbol, entry in resolved.items():
            if entry is None or (symbol not in self._universe_index and symbol != "VIX"):
                continue
            block_key = (entry.snapshot.source, symbol, entry.snapshot.as_of)
            block = self.cache.get(block_key, clock)
            if block is None:
                tally.feature_misses += 1
                pending.append((symbol, entry, block_key))
            else:
                tally.feature_hits += 1
                self._place(vector, symbol, block)
        if pending:
            self._compute_blocks(vector, pending, t_ns, clock)
        used = [entry for entry in resolved.values() if entry is not None]
        sources = sorted({entry.snapshot.source for entry in used})
        key = tuple(
            (symbol, entry.snapshot.source, entry.snapshot.as_of)
            for symbol, entry in resolved.items()
            if entry is not None
        )
        return MarketView(
            vector=vector,
            snapshots=resolved,
            key=key,
            token=self._token(key),
            source="+".join(sources) if sources else None,
            as_of=max((entry.snapshot.as_of for entry in used), default=None),
            stale=any(entry.stale for entry in used),
        )

    def _token(self, key: tuple[Any, ...]) -> int:
        """Intern ``key``: equal keys get one token; a token never stands for two keys.

        PERF: the prediction cache key of every order holds its view's identity; hashing a
        small int is free where the tuple of (symbol, source, as_of) triples costs ~1 µs,
        twice per order. After a reset a key gets a fresh token, so it can only miss.
        """
        token = self._tokens.get(key)
        if token is None:
            if len(self._tokens) >= _MAX_VIEW_TOKENS:
                self._tokens.clear()
            self._last_token += 1
            token = self._tokens[key] = self._last_token
        return token

    def _compute_blocks(
        self,
        vector: np.ndarray,
        pending: list[tuple[str, ResolvedSnapshot, tuple[Any, ...]]],
        t_ns: int,
        clock: float,
    ) -> None:
        equities = [(s, e, k) for s, e, k in pending if s != "VIX"]
        if equities:
            arrays = snapshot_arrays([entry.snapshot.bars for _, entry, _ in equities])
            blocks = market_block(*arrays, t_ns)
            for (symbol, _, key), block in zip(equities, blocks, strict=True):
                block = block.copy()
                self.cache.put(key, block, clock)
                self._place(vector, symbol, block)
        for symbol, entry, key in pending:
            if symbol != "VIX":
                continue
            starts, _, _, close, _ = snapshot_arrays([entry.snapshot.bars])
            block = vix_block(starts, close, t_ns, self.registry.vix_bounds)
            self.cache.put(key, block, clock)
            self._place(vector, symbol, block)

    def _place(self, vector: np.ndarray, symbol: str, block: np.ndarray) -> None:
        if symbol == "VIX":
            vector[self._vix_offset : self._vix_offset + block.shape[0]] = block
            return
        start = self._universe_index[symbol] * _N_IND
        vector[start : start + _N_IND] = block


class Predictor:
    """Scores batches of orders against the current model set.

    The model set is one reference, read once per batch, so a reload never mixes two
    model versions inside a batch and in-flight batches finish on the set they started with.
    """

    def __init__(
        self,
        models: ModelSet,
        market: MarketData,
        registry: FeatureRegistry,
        *,
        max_batch_size: int = 100,
        feature_cache: TTLCache[np.ndarray] | None = None,
        prediction_cache: TTLCache[Prediction] | None = None,
    ) -> None:
        self._models = models
        self.market = market
        self.registry = registry
        self.max_batch_size = max_batch_size
        self.features = MarketFeatures(
            market,
            registry,
            # An empty TTLCache is falsy (it has __len__): test for None, or the configured
            # caches would be replaced by these defaults.
            TTLCache("features", 1000, 60.0) if feature_cache is None else feature_cache,
        )
        self.prediction_cache = (
            TTLCache("predictions", 1000, 300.0) if prediction_cache is None else prediction_cache
        )
        self.last_stages = StageTimes()

    @property
    def models(self) -> ModelSet:
        """The model set serving new batches."""
        return self._models

    def swap_models(self, models: ModelSet) -> None:
        """Serve ``models`` from the next batch on (one reference assignment)."""
        self._models = models
        self.prediction_cache.clear()

    async def predict_batch(
        self, orders: Sequence[Order], share_market_data: bool = True, now: datetime | None = None
    ) -> BatchResponse:
        """Answer every order, in request order; a bad order only fails its own item.

        Raises:
            PayloadTooLarge: more orders than ``max_batch_size`` (never truncated).
        """
        started = time.perf_counter()
        if len(orders) > self.max_batch_size:
            raise PayloadTooLarge(
                f"batch of {len(orders)} orders exceeds max_batch_size {self.max_batch_size}; "
                "split it into smaller batches",
                max_batch_size=self.max_batch_size,
                received=len(orders),
            )
        now = now or datetime.now(UTC)
        work = _Work(batch=build_batch(list(orders), now), now=now, answers=[None] * len(orders))
        self._route(work, self._models)
        work.stages.validate = time.perf_counter() - started

        mark = time.perf_counter()
        await self._market_views(work, share_market_data)
        work.stages.market_data = time.perf_counter() - mark

        to_score = self._from_cache(work, self._attach_prices(work))
        if to_score:
            self._score(work, to_score)

        batch = work.batch
        for position, (field_name, message) in batch.errors.items():
            work.answers[position] = _error_item(batch, position, field_name, message, now)
        tally = work.tally
        self.last_stages = work.stages
        return BatchResponse(
            predictions=[answer for answer in work.answers if answer is not None],
            batch_metrics=BatchMetrics(
                **{name: getattr(tally, name) for name in Tally.__slots__},
                elapsed_ms=(time.perf_counter() - started) * 1e3,
            ),
        )

    async def predict_one(self, order: Order, now: datetime | None = None) -> Prediction:
        """Answer one order; a per-order failure becomes a 422 naming the field."""
        response = await self.predict_batch([order], True, now)
        answer = response.predictions[0]
        if answer.error is not None:
            message = answer.error.removeprefix("requests[0].")
            raise InvalidOrder(message, field=message.partition(":")[0])
        return answer

    # -- stages ---------------------------------------------------------------------------

    def _route(self, work: _Work, model_set: ModelSet) -> None:
        """Pick each order's model from one model set, so a batch never mixes two."""
        batch = work.batch
        for position in batch.valid:
            model = model_set.route(batch.symbols[position], batch.strategies[position])
            if model is None:
                batch.errors[position] = (
                    "symbol",
                    f"no model serves {batch.symbols[position]} / {batch.strategies[position]}",
                )
            work.routed.append(model)

    async def _market_views(self, work: _Work, share: bool) -> None:
        """Resolve one market view per as-of group and record each row's view."""
        batch, routed = work.batch, work.routed
        rows = [row for row, model in enumerate(routed) if model is not None]
        work.view_of_row = [-1] * len(routed)
        groups: dict[Any, list[int]] = {}
        for row in rows:
            # Shared: one snapshot for the whole batch. Otherwise orders whose times fall
            # between the same two bar completions see the same data, so they share a view.
            key = None if share else batch.times[row].timestamp() // 300
            groups.setdefault(key, []).append(row)
        for members in groups.values():
            # The earliest decision time of the group: no order sees a bar from its future.
            as_of = min(batch.times[row] for row in members)
            symbols: dict[str, None] = {}
            # PERF: a model's symbols are added once, not once per order it serves (~2 µs an
            # order); the insertion order, hence the view's identity, is unchanged.
            seen: set[int] = set()
            for row in members:
                model = work.model(row)
                if id(model) not in seen:
                    seen.add(id(model))
                    plan = model.plan
                    symbols.update(dict.fromkeys(plan.symbols))
                    if plan.needs_vix:
                        symbols["VIX"] = None
                symbols[batch.symbols[batch.valid[row]]] = None
            view = await self.features.view(list(symbols), as_of, work.tally)
            for row in members:
                work.view_of_row[row] = len(work.views)
            work.views.append(view)

    def _attach_prices(self, work: _Work) -> list[int]:
        """Fill each order's price from its symbol's latest close; drop orders with no data."""
        batch = work.batch
        columns = batch.columns
        assert columns is not None
        scorable: list[int] = []
        # PERF: one isnan over the column, and one last-close read per (view, symbol) rather
        # than per order: a numpy scalar test costs ~1 µs and a polars scalar read ~3 µs.
        needs_price = np.isnan(columns.price).tolist()
        closes: dict[tuple[int, str], float] = {}
        for row, model in enumerate(work.routed):
            if model is None:
                continue
            position = batch.valid[row]
            symbol = batch.symbols[position]
            view_index = work.view_of_row[row]
            entry = work.views[view_index].snapshots.get(symbol)
            if entry is None:
                providers = ", ".join(slot.provider.name for slot in self.market.slots)
                batch.errors[position] = (
                    "symbol",
                    f"no market data for {symbol} from any provider ({providers})",
                )
                continue
            if needs_price[row]:
                close = closes.get((view_index, symbol))
                if close is None:
                    close = closes[(view_index, symbol)] = entry.snapshot.last_close
                columns.price[row] = close
            scorable.append(row)
        return scorable

    def _cache_key(self, work: _Work, row: int) -> tuple[Any, ...]:
        return (work.model(row).label, work.view(row).token, work.batch.keys[row])

    def _from_cache(self, work: _Work, rows: list[int]) -> list[int]:
        """Answer rows from the prediction cache; return the rows still to score."""
        clock = time.monotonic()
        misses: list[int] = []
        for row in rows:
            # PERF: each key is built and kept once; _score stores the answer under it.
            key = work.cache_keys[row] = self._cache_key(work, row)
            cached = self.prediction_cache.get(key, clock)
            if cached is None:
                work.tally.prediction_misses += 1
                misses.append(row)
            else:
                work.tally.prediction_hits += 1
                # The same bars can turn stale while cached (a feed died): the flag is the
                # view's now, not the one the answer was cached with.
                work.answers[work.batch.valid[row]] = msgspec.structs.replace(
                    cached, cached=True, timestamp=work.now, stale=work.view(row).stale
                )
        return misses

    def _assembled(
        self, work: _Work, rows: list[int]
    ) -> Iterator[tuple[LoadedModel, list[int], np.ndarray, np.ndarray, np.ndarray]]:
        """Compute features for the batch once; yield each routed model's input rows.

        Yields:
            ``(model, rows, matrix, missing, order_features)`` per model: the float32 rows
            onnxruntime receives and the count of missing features in each.
        """
        stages, batch = work.stages, work.batch
        mark = time.perf_counter()
        assert batch.columns is not None
        features = order_features(batch.columns)
        market = np.stack([view.vector for view in work.views])
        stages.features = time.perf_counter() - mark
        by_model: dict[int, tuple[LoadedModel, list[int]]] = {}
        for row in rows:
            model = work.model(row)
            group = by_model.get(id(model))
            if group is None:
                group = by_model[id(model)] = (model, [])
            group[1].append(row)
        for model, members in by_model.values():
            mark = time.perf_counter()
            matrix, missing = assemble(
                model.maps,
                features,
                market,
                np.asarray(members, dtype=np.intp),
                np.asarray([work.view_of_row[row] for row in members], dtype=np.intp),
                model.zero_missing,
            )
            stages.features += time.perf_counter() - mark
            yield model, members, matrix, missing, features

    def _score(self, work: _Work, rows: list[int]) -> None:
        """One onnxruntime call per routed model, then the decisions."""
        stages, batch = work.stages, work.batch
        clock = time.monotonic()
        cache, keys, answers = self.prediction_cache, work.cache_keys, work.answers
        for model, members, matrix, missing, features in self._assembled(work, rows):
            mark = time.perf_counter()
            probabilities = model.score(matrix)
            stages.inference += time.perf_counter() - mark
            mark = time.perf_counter()
            # PERF: one small struct per order; the arithmetic above was columnar. The
            # numbers cross to Python floats in three bulk tolist() calls: reading numpy
            # scalars and testing them with np.isfinite costs ~1 µs apiece.
            money = features[np.ix_(np.asarray(members, dtype=np.intp), _MONEY)].tolist()
            templates: dict[int, Prediction] = {}
            for row, probability, missing_count, (risk, reward, ratio) in zip(
                members, probabilities.tolist(), missing.tolist(), money, strict=True
            ):
                position = batch.valid[row]
                view_index = work.view_of_row[row]
                template = templates.get(view_index)
                if template is None:
                    template = templates[view_index] = _template(
                        model, work.views[view_index], work.now
                    )
                answer = _prediction(
                    template,
                    model,
                    batch.strategies[position],
                    batch.symbols[position],
                    probability,
                    (risk, reward, ratio),
                    missing_count,
                )
                answers[position] = answer
                cache.put(keys[row], answer, clock)
            stages.decide += time.perf_counter() - mark

    async def model_inputs(
        self, orders: Sequence[Order], share_market_data: bool = True, now: datetime | None = None
    ) -> list[tuple[str, np.ndarray] | None]:
        """Return, per order, the model label and the exact float32 row it would be scored on.

        For parity checks and diagnostics: the same stages as ``predict_batch`` without the
        caches or onnxruntime. None for orders that cannot be scored.
        """
        now = now or datetime.now(UTC)
        work = _Work(batch=build_batch(list(orders), now), now=now, answers=[None] * len(orders))
        self._route(work, self._models)
        await self._market_views(work, share_market_data)
        inputs: list[tuple[str, np.ndarray] | None] = [None] * len(orders)
        for model, members, matrix, _, _ in self._assembled(work, self._attach_prices(work)):
            for k, row in enumerate(members):
                inputs[work.batch.valid[row]] = (model.label, matrix[k])
        return inputs

    # -- other endpoints --------------------------------------------------------------------

    def risk_reward(self, request: RiskRewardRequest) -> dict[str, Any]:
        """Risk, reward, ratio and breakevens of one structure (``/calculate_risk_reward``).

        Raises:
            InvalidOrder: unknown strategy, bad action/type, wrong strike count, premium <= 0.
        """
        try:
            code = canonical_strategy(request.strategy)
            strikes = parse_strikes(request.strikes, code)
            if not strikes:
                raise OrderRejected("strikes", "at least one set of strikes is required")
            if not request.premium > 0:
                raise OrderRejected("premium", f"must be > 0, got {request.premium}")
            if request.quantity < 1:
                raise OrderRejected("quantity", f"must be >= 1, got {request.quantity}")
            action = parse_action(request.action, code)
            option_type = parse_option_type(request.option_type)
        except OrderRejected as ex:
            raise InvalidOrder(f"{ex.field}: {ex.message}", field=ex.field) from None
        padded = np.full((1, 4), np.nan)
        padded[0, : len(strikes)] = strikes
        risk, reward, ratio, low, high = risk_reward(
            np.array([code], dtype=np.int8),
            np.array([action], dtype=np.int8),
            np.array([option_type], dtype=np.int8),
            padded,
            np.array([len(strikes)], dtype=np.int8),
            np.array([request.premium]),
            np.array([float(request.quantity)]),
        )
        breakevens = sorted({_finite(low[0]), _finite(high[0])} - {None})  # type: ignore[type-var]
        return {
            "symbol": request.symbol.upper(),
            "strategy": STRATEGIES[code],
            "risk": _finite(risk[0]),
            "reward": _finite(reward[0]),
            "risk_reward_ratio": _finite(ratio[0]),
            "breakevens": breakevens,
        }


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _finite_float(value: float) -> float | None:
    # PERF: for Python floats (from tolist()), math.isfinite is ~10x cheaper than np.isfinite.
    return value if math.isfinite(value) else None


def _template(model: LoadedModel, view: MarketView, now: datetime) -> Prediction:
    """The fields every prediction of one model on one market view shares."""
    return Prediction(
        timestamp=now,
        symbol="",
        strategy="",
        win_probability=None,
        prediction="UNKNOWN",
        data_source=view.source,
        n_features=len(model.plan.names),
        threshold=None,
        model_type=model.manifest.kind,
        model_version=model.label,
        loss_probability=None,
        confidence=None,
        risk=None,
        reward=None,
        risk_reward_ratio=None,
        data_as_of=view.as_of,
        stale=view.stale,
        missing_features=0,
        cached=False,
    )


def _prediction(
    template: Prediction,
    model: LoadedModel,
    strategy: str,
    symbol: str,
    probability: float,
    money: tuple[float, float, float],
    missing: int,
) -> Prediction:
    risk, reward, ratio = money
    threshold = model.threshold(strategy)
    # PERF: replace() on the (model, view) template sets the 11 per-order fields in ~0.5 µs;
    # the 19-keyword constructor takes ~2.2 µs.
    return msgspec.structs.replace(
        template,
        symbol=symbol,
        strategy=strategy,
        win_probability=probability,
        prediction="WIN" if probability >= threshold else "LOSS",
        threshold=threshold,
        loss_probability=1.0 - probability,
        confidence=abs(probability - 0.5) * 2.0,
        risk=_finite_float(risk),
        reward=_finite_float(reward),
        risk_reward_ratio=_finite_float(ratio),
        missing_features=missing,
    )


def _error_item(
    batch: OrderBatch, position: int, field_name: str, message: str, now: datetime
) -> Prediction:
    return Prediction(
        timestamp=now,
        symbol=batch.symbols[position],
        strategy=batch.strategies[position],
        win_probability=None,
        prediction="UNKNOWN",
        data_source=None,
        n_features=0,
        threshold=None,
        model_type=None,
        model_version=None,
        loss_probability=None,
        confidence=None,
        risk=None,
        reward=None,
        risk_reward_ratio=None,
        data_as_of=None,
        stale=False,
        missing_features=0,
        cached=False,
        error=f"requests[{position}].{field_name}: {message}",
    )

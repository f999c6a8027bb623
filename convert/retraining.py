"""Convert booster files, alone or as a whole retraining directory, all or nothing."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import xgboost

from convert.manifest import DEFAULT_THRESHOLD_KEY
from convert.onnx_export import (
    BOOSTER_FORMATS,
    ConversionError,
    PreparedModel,
    StoredModel,
    load_booster,
    prepare_model,
    store_model,
)
from convert.pickles import PICKLE_SUFFIXES, load_pickled_booster, load_pickled_feature_list
from inference.orders import OrderRejected, canonical_strategy
from kernels.registry import STRATEGIES

FeatureCheck = Callable[[list[str]], None]
"""The feature registry's check: raises ValueError listing every unknown name."""

THRESHOLDS_FILE: Final = "thresholds.json"
GROUP_THRESHOLDS_FILE: Final = "thresholds_grouped.json"
DEFAULT_THRESHOLD: Final = 0.5
"""Decision threshold of a strategy the thresholds files say nothing about."""
DIRECTORY_MISSING: Final = "zero"
"""The previous project's trainer filled missing values with 0, so its models expect 0."""

# When one model was saved in several formats, the first of these present is converted.
_MODEL_SUFFIXES: Final = (".ubj", ".json", ".pkl", ".pickle", ".joblib")
_FEATURE_SUFFIXES: Final = (".json", ".pkl", ".pickle", ".joblib")
_MODEL_STEM: Final = re.compile(r"(?P<base>.+)_model")
_FEATURES_STEM: Final = re.compile(r"(?P<base>.+)_features")
_SYMBOL: Final = re.compile(r"[A-Z0-9][A-Z0-9.]{0,15}")
_PICKLE_REFUSED: Final = (
    "loading a pickle can run code, so pickles are refused unless --allow-pickle is given "
    "(then a restricted unpickler admits only an XGBoost Booster/XGBClassifier or a list of "
    "strings)"
)


def load_model_file(path: Path, *, allow_pickle: bool) -> tuple[xgboost.Booster, str | None]:
    """Load a booster from ``.json``, ``.ubj`` or (with ``allow_pickle``) a pickle.

    Args:
        path: The model file.
        allow_pickle: Whether ``.pkl``/``.pickle``/``.joblib`` files may be unpickled (with the
            restricted unpickler of `convert.pickles`).

    Returns:
        The booster, and the XGBoost version a pickle recorded (None for JSON/UBJ, whose
        version the manifest reads from the file itself).

    Raises:
        ConversionError: For a pickle without ``allow_pickle``, another suffix, or a file that
            is missing, truncated or not an XGBoost model.
    """
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ConversionError(f"{path}: is a pickle; {_PICKLE_REFUSED}")
        return load_pickled_booster(path)
    if suffix not in BOOSTER_FORMATS:
        raise ConversionError(
            f"{path}: unsupported model file type {path.suffix!r}; expected .json, .ubj, "
            ".pkl or .joblib"
        )
    return load_booster(path), None


def load_feature_file(path: Path, *, allow_pickle: bool) -> list[str]:
    """Read a feature list: a JSON list of strings, or (with ``allow_pickle``) a pickled one.

    Args:
        path: The feature list file.
        allow_pickle: Whether a pickled list may be unpickled (restricted unpickler).

    Returns:
        The feature names, in model-column order.

    Raises:
        ConversionError: If the file is unreadable, not a list of strings, or a pickle without
            ``allow_pickle``.
    """
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ConversionError(f"{path}: is a pickle; {_PICKLE_REFUSED}")
        return load_pickled_feature_list(path)
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as ex:
        raise ConversionError(f"{path}: cannot read the feature list: {ex}") from ex
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConversionError(f"{path}: the feature list must be a JSON list of strings")
    return names


def prepare_source(
    src: Path,
    *,
    name: str,
    kind: str,
    symbols: Sequence[str],
    strategies: Sequence[str],
    thresholds: Mapping[str, float],
    missing: str,
    feature_names: Sequence[str] | None = None,
    features_file: Path | None = None,
    allow_pickle: bool = False,
    known_features: FeatureCheck | None = None,
) -> PreparedModel:
    """Load one model file, settle its feature names, check them, convert and gate it.

    Feature names come from the booster when it has them, else from ``feature_names`` or
    ``features_file``; when both exist they must agree. Every name must pass
    ``known_features`` before anything is converted. Nothing is written.

    Args:
        src: The model file.
        name: Model name in the repository.
        kind: Routing kind.
        symbols: Symbols served; empty means all.
        strategies: Strategies served; empty means all.
        thresholds: Strategy -> decision threshold, with a ``default`` entry.
        missing: ``nan`` or ``zero``.
        feature_names: Names given directly.
        features_file: A feature list file (used when ``feature_names`` is None).
        allow_pickle: Whether pickled models and feature lists may be loaded.
        known_features: The feature registry's check.

    Returns:
        The gated model, ready for `convert.onnx_export.store_model`.

    Raises:
        ConversionError: With the reason, for any expected failure.
    """
    booster, pickled_version = load_model_file(src, allow_pickle=allow_pickle)
    listed = list(feature_names) if feature_names is not None else None
    if listed is None and features_file is not None:
        listed = load_feature_file(features_file, allow_pickle=allow_pickle)
    if booster.feature_names:
        names = list(booster.feature_names)
        if listed is not None and listed != names:
            raise ConversionError(
                f"{src}: the booster's feature names differ from the feature list given"
            )
    elif listed is not None:
        names = listed
    else:
        raise ConversionError(f"{src}: the booster has no feature names; give a feature list")
    if known_features is not None:
        try:
            known_features(names)
        except ValueError as ex:
            raise ConversionError(f"{src}: {ex}") from ex
    try:
        return prepare_model(
            booster,
            feature_names=names,
            name=name,
            kind=kind,
            symbols=symbols,
            strategies=strategies,
            thresholds=thresholds,
            missing=missing,
            source_path=src,
            source_xgboost_version=pickled_version,
        )
    except ConversionError as ex:
        raise ConversionError(f"{src}: {ex}") from ex


@dataclass(frozen=True)
class ModelEntry:
    """One model of a retraining directory and how the server is to route it.

    Attributes:
        path: The model file converted.
        name: Model name in the repository: the file stem without ``_model``.
        kind: ``symbol``, ``symbol_strategy`` or ``group``.
        symbols: Symbols served.
        strategies: Strategies served (empty: all).
        features_file: Its ``*_features.*`` file, if there is one.
        thresholds: Strategy -> decision threshold, with a ``default`` entry.
    """

    path: Path
    name: str
    kind: str
    symbols: tuple[str, ...]
    strategies: tuple[str, ...]
    features_file: Path | None
    thresholds: dict[str, float]


@dataclass
class RetrainingLayout:
    """What a retraining directory holds, as far as conversion is concerned.

    Attributes:
        models: The models to convert, in file-name order.
        problems: Reasons the directory cannot be converted as it is (empty when it can).
        notes: Things worth telling whoever runs the conversion (ignored files, defaults used).
    """

    models: list[ModelEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class RetrainingError(ConversionError):
    """A retraining directory that cannot be converted; nothing was written.

    Attributes:
        problems: One line per reason, each naming its file.
    """

    def __init__(self, directory: Path, problems: Sequence[str], converted: int) -> None:
        """Build the message: a headline, then one indented line per problem.

        Args:
            directory: The retraining directory.
            problems: The reasons, one per model or file.
            converted: How many models passed, which are not written either.
        """
        self.problems = list(problems)
        headline = f"{directory}: nothing written; {len(self.problems)} problem(s)" + (
            f" ({converted} model(s) passed and were discarded)" if converted else ""
        )
        super().__init__("\n".join([headline, *(f"  {problem}" for problem in self.problems)]))


@dataclass(frozen=True)
class DirectoryResult:
    """What converting a retraining directory did.

    Attributes:
        stored: Each model's repository entry, in the order of `RetrainingLayout.models`.
        notes: The layout's notes.
    """

    stored: list[StoredModel]
    notes: list[str]


def _classify(base: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """Tell kind, symbols and strategies from a model file stem without ``_model``.

    Raises:
        ValueError: If the stem follows none of the retraining layout's patterns.
    """
    parts = base.split("_")
    strategies: tuple[str, ...] = ()
    if len(parts) < 2:
        raise ValueError(
            "expected {SYM}_trades_model, {SYM}_{Strategy}_model or {A}_{B}_combined_model"
        )
    if parts[-1].lower() == "combined":
        kind, symbol_parts = "group", parts[:-1]
        if len(symbol_parts) < 2:
            raise ValueError("a combined model names at least two symbols: {A}_{B}_combined_model")
    elif len(parts) == 2 and parts[1].lower() == "trades":
        kind, symbol_parts = "symbol", parts[:1]
    else:
        try:
            strategy = STRATEGIES[canonical_strategy("_".join(parts[1:]))]
        except OrderRejected as ex:
            raise ValueError(ex.message) from ex
        kind, symbol_parts, strategies = "symbol_strategy", parts[:1], (strategy,)
    symbols = tuple(part.upper() for part in symbol_parts)
    bad = [symbol for symbol in symbols if not _SYMBOL.fullmatch(symbol)]
    if bad:
        raise ValueError(f"{', '.join(repr(symbol) for symbol in bad)} is not a symbol")
    return kind, symbols, strategies


def _strategy_key(raw: str) -> str:
    """Map a thresholds-file key to ``default`` or a canonical strategy name.

    Raises:
        ValueError: For anything else.
    """
    if raw.strip().lower() == DEFAULT_THRESHOLD_KEY:
        return DEFAULT_THRESHOLD_KEY
    try:
        return STRATEGIES[canonical_strategy(raw)]
    except OrderRejected as ex:
        raise ValueError(ex.message) from ex


def _read_thresholds(path: Path, problems: list[str]) -> dict[str, dict[str, float]]:
    """Read ``{key: {strategy: value}}``, canonicalising strategy names; problems are collected."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as ex:
        problems.append(f"{path.name}: cannot read it: {ex}")
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{path.name}: expected an object of {{key: {{strategy: threshold}}}}")
        return {}
    table: dict[str, dict[str, float]] = {}
    for key, by_strategy in raw.items():
        if not isinstance(by_strategy, dict):
            problems.append(f"{path.name}: [{key!r}] is not an object of strategy: threshold")
            continue
        values: dict[str, float] = {}
        for strategy, value in by_strategy.items():
            where = f"{path.name}: [{key!r}][{strategy!r}]"
            try:
                canonical = _strategy_key(strategy)
            except ValueError as ex:
                problems.append(f"{where}: {ex}")
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and 0.0 <= value <= 1.0)
            ):
                problems.append(f"{where}: {value!r} is not a threshold within [0, 1]")
                continue
            values[canonical] = float(value)
        table[str(key)] = values
    return table


def _group_key(raw: str) -> frozenset[str]:
    """The symbols a ``thresholds_grouped.json`` key names: ``SPX_SPY`` or ``SPX_SPY_combined``."""
    parts = [part.upper() for part in raw.split("_") if part]
    if parts and parts[-1] == "COMBINED":
        parts.pop()
    return frozenset(parts)


def _pick_by_suffix(paths: list[Path], order: Sequence[str]) -> Path:
    """Return the path whose suffix comes first in ``order``."""
    return min(paths, key=lambda path: order.index(path.suffix.lower()))


def _group_files(
    files: Sequence[Path], pattern: re.Pattern[str], suffixes: Sequence[str]
) -> dict[str, list[Path]]:
    """Group files whose stem matches ``pattern`` and suffix is in ``suffixes`` by ``base``."""
    grouped: dict[str, list[Path]] = {}
    for path in files:
        match = pattern.fullmatch(path.stem)
        if match and path.suffix.lower() in suffixes:
            grouped.setdefault(match.group("base"), []).append(path)
    return grouped


def _thresholds_for(
    entry: str,
    table: dict[str, float] | None,
    source: str,
    strategies: tuple[str, ...],
    notes: list[str],
) -> dict[str, float]:
    """Build a model's thresholds from its entry in ``source`` (None: there is no such file)."""
    if not table:
        missing = "no entry in" if table is not None else "no"
        notes.append(f"{entry}: {missing} {source}; threshold {DEFAULT_THRESHOLD:g} for all")
    thresholds = {DEFAULT_THRESHOLD_KEY: DEFAULT_THRESHOLD, **(table or {})}
    if strategies:
        # A symbol x strategy model answers one strategy; only its threshold applies.
        thresholds = {
            key: value
            for key, value in thresholds.items()
            if key in strategies or key == DEFAULT_THRESHOLD_KEY
        }
    return thresholds


def scan_directory(directory: Path) -> RetrainingLayout:
    """Find the models, feature lists and thresholds of a retraining directory.

    Recognised files: ``{SYM}_trades_model.*`` (symbol models), ``{SYM}_{Strategy}_model.*``
    (symbol x strategy; the strategy may hold a space or an underscore, e.g.
    ``SPX_Iron Condor_model.json``), ``{A}_{B}_combined_model.*`` (groups), each with an
    optional ``{same}_features.{json,pkl}``, and ``thresholds.json`` (symbol -> strategy ->
    value) and ``thresholds_grouped.json`` (group -> strategy -> value; a group is written
    ``A_B`` or ``A_B_combined``). Model files are ``.ubj``, ``.json``, ``.pkl``, ``.pickle``
    or ``.joblib``; when one model was saved in several, the first of that list is used.

    Args:
        directory: The retraining output.

    Returns:
        The models with their routing and thresholds, every problem found (a model file whose
        name follows no pattern, two models for one route, bad thresholds), and notes.
    """
    layout = RetrainingLayout()
    files = sorted(
        path for path in directory.iterdir() if path.is_file() and not path.name.startswith(".")
    )
    models = _group_files(files, _MODEL_STEM, _MODEL_SUFFIXES)
    features = _group_files(files, _FEATURES_STEM, _FEATURE_SUFFIXES)
    by_symbol = by_group = None
    if (directory / THRESHOLDS_FILE).is_file():
        by_symbol = {
            key.upper(): values
            for key, values in _read_thresholds(
                directory / THRESHOLDS_FILE, layout.problems
            ).items()
        }
    if (directory / GROUP_THRESHOLDS_FILE).is_file():
        by_group = {
            _group_key(key): values
            for key, values in _read_thresholds(
                directory / GROUP_THRESHOLDS_FILE, layout.problems
            ).items()
        }
    routes: dict[tuple[str, tuple[str, ...], tuple[str, ...]], str] = {}
    for base, paths in sorted(models.items()):
        chosen = _pick_by_suffix(paths, _MODEL_SUFFIXES)
        for other in paths:
            if other != chosen:
                layout.notes.append(f"{other.name}: not converted; {chosen.name} is used instead")
        try:
            kind, symbols, strategies = _classify(base)
        except ValueError as ex:
            layout.problems.append(f"{chosen.name}: cannot tell what it serves: {ex}")
            continue
        route = (kind, tuple(sorted(symbols)), strategies)
        if route in routes:
            layout.problems.append(
                f"{chosen.name}: serves the same orders as {routes[route]}; keep one of them"
            )
            continue
        routes[route] = chosen.name
        feature_paths = features.pop(base, [])
        layout.models.append(
            ModelEntry(
                path=chosen,
                name=base,
                kind=kind,
                symbols=symbols,
                strategies=strategies,
                features_file=(
                    _pick_by_suffix(feature_paths, _FEATURE_SUFFIXES) if feature_paths else None
                ),
                thresholds=_thresholds_for(
                    chosen.name,
                    by_group.get(frozenset(symbols), {}) if by_group else None,
                    GROUP_THRESHOLDS_FILE,
                    strategies,
                    layout.notes,
                )
                if kind == "group"
                else _thresholds_for(
                    chosen.name,
                    by_symbol.get(symbols[0], {}) if by_symbol else None,
                    THRESHOLDS_FILE,
                    strategies,
                    layout.notes,
                ),
            )
        )
    for base, paths in sorted(features.items()):
        layout.notes.append(f"{paths[0].name}: no {base}_model file; ignored")
    served = {entry.symbols[0] for entry in layout.models if entry.kind != "group"}
    for symbol in sorted(set(by_symbol or {}) - served):
        layout.notes.append(f"{THRESHOLDS_FILE}: {symbol} has no model; its thresholds are unused")
    if not layout.models and not layout.problems:
        layout.problems.append(f"{directory}: no *_model.{{json,ubj,pkl,joblib}} file")
    return layout


def _pickles_refused(layout: RetrainingLayout) -> list[str]:
    """Name, in one problem, every pickle the conversion would have to load."""
    used = [entry.path for entry in layout.models] + [
        entry.features_file for entry in layout.models if entry.features_file is not None
    ]
    pickles = sorted(path.name for path in used if path.suffix.lower() in PICKLE_SUFFIXES)
    if not pickles:
        return []
    return [f"{len(pickles)} pickle(s) ({', '.join(pickles)}); {_PICKLE_REFUSED}"]


def _first_line(ex: Exception) -> str:
    """The first line of an error's message (XGBoost and onnx add traces below it)."""
    return (str(ex).strip().splitlines() or [repr(ex)])[0]


def _remove(stored: Sequence[StoredModel]) -> None:
    """Take back the version directories this run wrote (and model directories left empty)."""
    for entry in stored:
        if not entry.written:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        model_dir = entry.path.parent
        if model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()


def convert_directory(
    directory: Path,
    out: Path,
    *,
    allow_pickle: bool = False,
    missing: str = DIRECTORY_MISSING,
    known_features: FeatureCheck | None = None,
) -> DirectoryResult:
    """Convert every model of a retraining directory into the repository, or none of them.

    Every model is loaded, checked against the feature registry, converted and gated first;
    only when all pass is anything written. A model whose newest stored version is the same
    model is left as it is (no new version). If writing fails part-way, the versions already
    written by this run are removed again.

    Args:
        directory: The retraining output (layout in `scan_directory`).
        out: Root of the model repository.
        allow_pickle: Whether pickled models and feature lists may be loaded (restricted).
        missing: ``zero`` (how the previous project's trainer saw missing values) or ``nan``.
        known_features: The feature registry's check.

    Returns:
        The repository entries, in the layout's order, and the layout's notes.

    Raises:
        RetrainingError: Listing every problem found, one line each; nothing is written.
    """
    layout = scan_directory(directory)
    problems = layout.problems + ([] if allow_pickle else _pickles_refused(layout))
    if problems:
        raise RetrainingError(directory, problems, 0)
    prepared: list[PreparedModel] = []
    for entry in layout.models:
        try:
            prepared.append(
                prepare_source(
                    entry.path,
                    name=entry.name,
                    kind=entry.kind,
                    symbols=entry.symbols,
                    strategies=entry.strategies,
                    thresholds=entry.thresholds,
                    missing=missing,
                    features_file=entry.features_file,
                    allow_pickle=allow_pickle,
                    known_features=known_features,
                )
            )
        except ConversionError as ex:
            # Within one directory, file names say enough; the full paths only add noise.
            problems.append(_first_line(ex).replace(f"{directory}{os.sep}", ""))
    if problems:
        raise RetrainingError(directory, problems, len(prepared))
    stored: list[StoredModel] = []
    for model in prepared:
        try:
            stored.append(store_model(model, out))
        except ConversionError as ex:
            _remove(stored)
            raise RetrainingError(directory, [_first_line(ex)], 0) from ex
    return DirectoryResult(stored=stored, notes=layout.notes)

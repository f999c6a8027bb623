"""Convert XGBoost boosters to ONNX and add them to the model repository behind a parity gate."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import onnx
import onnxmltools
import onnxruntime
import xgboost
from onnxmltools.convert import convert_xgboost
from onnxmltools.convert.common.data_types import FloatTensorType

# onnxmltools guesses "regressor" for a bare Booster whose node covers are all whole numbers (one
# tree with base_score 0.5 on a row count divisible by 4 is enough), so we wrap the booster
# ourselves and state that it is a binary classifier. The wrapper is only exported privately.
from onnxmltools.convert.xgboost._parse import WrappedBooster

from convert.manifest import (
    Manifest,
    ManifestError,
    ParityInfo,
    SourceInfo,
    read_manifest,
    sha256_file,
    write_manifest,
)
from convert.parity import (
    MIN_PARITY_ROWS,
    dumped_trees,
    parity_rows,
    split_thresholds,
    tree_depth,
    unnamed_copy,
)

INPUT_NAME = "input"
"""Name of the graph input: float32 ``[N, n_features]`` in manifest feature order."""
OUTPUT_NAME = "win_probability"
"""Name of the graph's only output: float32 ``[N]``, P(class 1) = the win probability."""
TARGET_OPSET = 15
"""Default-domain opset: the newest onnxmltools 1.16 converts to; onnxruntime >= 1.10 runs it."""
PARITY_TOLERANCE = 1e-5
"""Largest absolute difference between ONNX and ``Booster.predict`` the gate accepts."""
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
BOOSTER_FORMATS = {".json": "json", ".ubj": "ubj"}
"""Booster file suffix -> source format recorded in the manifest."""

_ML_DOMAIN = "ai.onnx.ml"
_TREE_OP = "TreeEnsembleClassifier"
_GRAPH_NAME = "magic8_win_probability"
_VERSION_DIR = re.compile(r"v([0-9]+)")
_XGBOOST_LOG_PREFIX = re.compile(r"^\[[0-9:]+\]\s+\S+:[0-9]+:\s*")
_UBJ_VERSION = re.compile(rb"version\[(?:#[iUIlL].{1,8}?)?((?:[iU].){3})", re.DOTALL)
# Manifest fields that may differ between two writes of the same model without making it new.
_BOOKKEEPING_FIELDS = frozenset({"version", "created", "converter", "parity"})


class ConversionError(Exception):
    """A booster that cannot be converted, or a conversion that failed the gate."""


def load_booster(path: Path) -> xgboost.Booster:
    """Load an XGBoost booster saved as JSON or UBJ.

    Args:
        path: A ``.json`` or ``.ubj`` booster file.

    Returns:
        The loaded booster.

    Raises:
        ConversionError: If the suffix is not ``.json``/``.ubj`` (pickles are not handled here),
            or the file is missing, truncated or not an XGBoost model.
    """
    path = Path(path)
    if path.suffix.lower() not in BOOSTER_FORMATS:
        raise ConversionError(
            f"{path}: unsupported booster file type {path.suffix!r}; expected .json or .ubj"
        )
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        return xgboost.Booster(model_file=str(path))
    except xgboost.core.XGBoostError as ex:
        raise unreadable_booster_error(path, str(ex)) from ex
    except UnicodeDecodeError as ex:
        # XGBoost's own error text can quote the raw byte it choked on (0xff for EOF), and then
        # decoding that text fails before the XGBoostError is even raised.
        message = bytes(ex.object).decode("utf-8", errors="replace")
        raise unreadable_booster_error(path, message) from ex


def unreadable_booster_error(path: Path, message: str) -> ConversionError:
    """Make the error for a booster file XGBoost cannot load, from XGBoost's message.

    Args:
        path: The file.
        message: XGBoost's error text.

    Returns:
        The error, naming the file and the first line of XGBoost's reason.
    """
    # The message is a C++ trace; its first line, minus the time and source location prefix
    # ("[02:27:45] /workspace/src/common/json.cc:409: "), says what is wrong.
    first_line = (message.strip().splitlines() or ["unknown error"])[0]
    reason = _XGBOOST_LOG_PREFIX.sub("", first_line)
    return ConversionError(f"{path}: not a readable XGBoost model ({reason})")


def _learner_config(booster: xgboost.Booster) -> dict[str, Any]:
    """Return the ``learner`` section of a booster's configuration."""
    learner: dict[str, Any] = json.loads(booster.save_config())["learner"]
    return learner


def _base_score(learner: Mapping[str, Any]) -> float:
    """Return the base score (probability space) from a learner configuration."""
    raw = str(learner["learner_model_param"]["base_score"])
    # XGBoost >= 3 writes a one-element list ("[5E-1]"), older versions a bare number.
    values = json.loads(raw) if raw.startswith("[") else [float(raw)]
    if len(values) != 1:
        raise ConversionError(f"expected one base score, found {len(values)}")
    return float(values[0])


def _check_supported(booster: xgboost.Booster, n_features: int) -> None:
    """Refuse boosters the served graph cannot reproduce as a single win probability."""
    learner = _learner_config(booster)
    objective = learner["objective"]["name"]
    if objective != "binary:logistic":
        raise ConversionError(
            f"objective {objective!r} is not supported; the server needs binary:logistic"
        )
    gradient_booster = learner["gradient_booster"]["name"]
    if gradient_booster != "gbtree":
        raise ConversionError(f"booster type {gradient_booster!r} is not supported; need gbtree")
    if booster.num_features() != n_features:
        raise ConversionError(
            f"the booster has {booster.num_features()} features but {n_features} names were given"
        )
    if booster.feature_types and any(kind == "c" for kind in booster.feature_types):
        raise ConversionError("categorical features are not supported")
    if booster.num_boosted_rounds() < 1:
        raise ConversionError("the booster has no trees")


def _serving_graph(converted: onnx.ModelProto, n_features: int) -> onnx.ModelProto:
    """Rebuild a converted classifier so its only output is the float32 [N] win probability."""
    nodes = list(converted.graph.node)
    if len(nodes) != 1 or nodes[0].op_type != _TREE_OP or nodes[0].domain != _ML_DOMAIN:
        found = [f"{node.domain}:{node.op_type}" for node in nodes]
        raise ConversionError(f"onnxmltools produced {found}, expected one {_TREE_OP}")
    tree_node = nodes[0]
    transform = next(
        (attr.s.decode() for attr in tree_node.attribute if attr.name == "post_transform"), "NONE"
    )
    if transform != "LOGISTIC":
        raise ConversionError(f"{_TREE_OP} has post_transform {transform!r}, expected LOGISTIC")
    # Column 1 of the classifier's [N, 2] probabilities is P(class 1); Gather with a scalar index
    # drops the axis, so the server reads a flat [N] vector with no slicing of its own.
    win_class = onnx.helper.make_tensor("win_class", onnx.TensorProto.INT64, [], [1])
    gather = onnx.helper.make_node(
        "Gather", [tree_node.output[1], win_class.name], [OUTPUT_NAME], axis=1, name="WinClass"
    )
    graph = onnx.helper.make_graph(
        [tree_node, gather],
        _GRAPH_NAME,
        [onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["N", n_features])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["N"])],
        initializer=[win_class],
    )
    ml_opset = max(
        (opset.version for opset in converted.opset_import if opset.domain == _ML_DOMAIN),
        default=1,
    )
    model = onnx.helper.make_model(
        graph,
        opset_imports=[
            onnx.helper.make_opsetid("", TARGET_OPSET),
            onnx.helper.make_opsetid(_ML_DOMAIN, ml_opset),
        ],
        producer_name=converted.producer_name,
        producer_version=converted.producer_version,
    )
    # Keep the converter's IR version: make_model would stamp the newest one, which older
    # onnxruntime builds (the project allows >= 1.18) refuse to load.
    model.ir_version = converted.ir_version
    return model


def booster_to_onnx(booster: xgboost.Booster, n_features: int) -> onnx.ModelProto:
    """Convert a binary:logistic booster to an ONNX graph that outputs the win probability.

    The graph has one input, ``input`` (float32 ``[N, n_features]``, missing values as NaN), and
    one output, ``win_probability`` (float32 ``[N]``, P(class 1)). The trees are an
    ``ai.onnx.ml`` ``TreeEnsembleClassifier`` with ``BRANCH_LT`` splits, followed by a ``Gather``
    of its probability column 1; the default-domain opset is `TARGET_OPSET`.

    Args:
        booster: The booster; it is not modified (a copy without feature names is converted,
            since onnxmltools only accepts names ``f0``...``fN``).
        n_features: Number of input columns, equal to the booster's feature count.

    Returns:
        The ONNX model.

    Raises:
        ConversionError: If the booster is not a binary:logistic tree model with ``n_features``
            numerical features, or onnxmltools fails.
    """
    _check_supported(booster, n_features)
    wrapped = WrappedBooster(unnamed_copy(booster))
    wrapped.kwargs.update(num_class=1, objective="binary:logistic")
    wrapped.classes_ = np.array([0, 1])
    wrapped.operator_name = "XGBClassifier"
    try:
        converted = convert_xgboost(
            wrapped,
            name=_GRAPH_NAME,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            target_opset=TARGET_OPSET,
        )
    except (RuntimeError, ValueError, TypeError, KeyError) as ex:
        raise ConversionError(f"onnxmltools could not convert the booster: {ex}") from ex
    return _serving_graph(converted, n_features)


def _threshold_row_count(booster: xgboost.Booster, rows: npt.NDArray[np.float32]) -> int:
    """Count rows holding a value exactly at one of its feature's split thresholds."""
    at_threshold = np.zeros(len(rows), dtype=bool)
    for feature, thresholds in split_thresholds(booster).items():
        at_threshold |= np.isin(rows[:, feature], thresholds)
    return int(at_threshold.sum())


def parity_check(booster: xgboost.Booster, onnx_bytes: bytes, rows: npt.NDArray[Any]) -> ParityInfo:
    """Compare the booster's probabilities with the ONNX graph's on the same rows.

    Both sides score the rows cast to float32, as the server feeds them, so a split threshold is
    compared with the very same value on both.

    Args:
        booster: The original booster (feature names may be set).
        onnx_bytes: The serialised ONNX model from `booster_to_onnx`.
        rows: ``[n, n_features]`` values, NaN for missing.

    Returns:
        Rows compared, the largest absolute difference (infinity if either side produced a
        non-finite value), rows with a missing value and rows with a value at a split threshold.

    Raises:
        ConversionError: If the graph's output does not have one value per row.
    """
    values = np.ascontiguousarray(rows, dtype=np.float32)
    matrix = xgboost.DMatrix(
        values,
        missing=np.nan,
        feature_names=booster.feature_names,
        feature_types=booster.feature_types,
    )
    expected = np.asarray(booster.predict(matrix), dtype=np.float64)
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    actual = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: values})[0], dtype=np.float64)
    if actual.shape != expected.shape:
        raise ConversionError(
            f"the ONNX output has shape {actual.shape}, Booster.predict {expected.shape}"
        )
    finite = bool(np.isfinite(actual).all() and np.isfinite(expected).all())
    max_abs_diff = float(np.abs(actual - expected).max(initial=0.0)) if finite else float("inf")
    return ParityInfo(
        rows=len(values),
        max_abs_diff=max_abs_diff,
        rows_with_missing=int(np.isnan(values).any(axis=1).sum()),
        threshold_rows=_threshold_row_count(booster, values),
    )


def _recorded_xgboost_version(path: Path) -> str:
    """Return the XGBoost version a JSON or UBJ model file records, or "unknown"."""
    # The top-level "version" entry is written last, so only the file's tail is read.
    with path.open("rb") as stream:
        stream.seek(max(path.stat().st_size - 256, 0))
        tail = stream.read()
    if path.suffix.lower() == ".json":
        match = re.search(rb'"version"\s*:\s*\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]', tail)
        return ".".join(part.decode() for part in match.groups()) if match else "unknown"
    return xgboost_version_in_ubj(tail)


def xgboost_version_in_ubj(data: bytes) -> str:
    """Return the XGBoost version recorded in UBJ model bytes, or "unknown".

    Args:
        data: A UBJ model, its tail, or the serialised booster a pickle holds.

    Returns:
        ``major.minor.patch`` of the last version entry found.
    """
    # Key "version", then an array of three small integers, counted ("[#" + count) or not.
    matches = list(_UBJ_VERSION.finditer(data))
    if not matches:
        return "unknown"
    items = matches[-1].group(1)
    return ".".join(str(items[index]) for index in (1, 3, 5))


def _source_info(
    booster: xgboost.Booster, source_path: Path, xgboost_version: str | None
) -> SourceInfo:
    """Describe the booster file a model is converted from."""
    trees = dumped_trees(booster)
    learner = _learner_config(booster)
    return SourceInfo(
        file=source_path.name,
        format=BOOSTER_FORMATS.get(source_path.suffix.lower(), source_path.suffix.lstrip(".")),
        sha256=sha256_file(source_path),
        xgboost_version=xgboost_version or _recorded_xgboost_version(source_path),
        n_trees=len(trees),
        max_depth=max((tree_depth(tree) for tree in trees), default=0),
        objective=str(learner["objective"]["name"]),
        base_score=_base_score(learner),
    )


def _converter_versions(model: onnx.ModelProto) -> dict[str, str]:
    """Record the tool versions and opsets a conversion used."""
    versions = {
        "onnxmltools": str(onnxmltools.__version__),
        "onnx": str(onnx.__version__),
        "onnxruntime": str(onnxruntime.__version__),
        "xgboost": str(xgboost.__version__),
    }
    for opset in model.opset_import:
        versions["opset" if opset.domain == "" else f"opset_{opset.domain}"] = str(opset.version)
    return versions


def _run_gate(
    booster: xgboost.Booster, n_features: int
) -> tuple[onnx.ModelProto, bytes, ParityInfo]:
    """Convert and check: onnx.checker, onnxruntime loads it, parity on the probe rows."""
    model = booster_to_onnx(booster, n_features)
    onnx_bytes = model.SerializeToString()
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as ex:
        raise ConversionError(f"onnx.checker rejected the model: {ex}") from ex
    try:
        onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    except Exception as ex:  # onnxruntime raises pybind11 types with no common public base
        raise ConversionError(f"onnxruntime cannot load the model: {ex}") from ex
    try:
        rows = parity_rows(booster, n_features)
    except ValueError as ex:
        raise ConversionError(f"cannot build parity rows: {ex}") from ex
    parity = parity_check(booster, onnx_bytes, rows)
    if parity.rows < MIN_PARITY_ROWS or parity.rows_with_missing == 0:
        raise ConversionError(
            f"parity ran on {parity.rows} rows ({parity.rows_with_missing} with missing values); "
            f"need >= {MIN_PARITY_ROWS} including missing values"
        )
    if not parity.max_abs_diff <= PARITY_TOLERANCE:
        raise ConversionError(
            f"parity failed: ONNX differs from Booster.predict by up to {parity.max_abs_diff:.3g} "
            f"(limit {PARITY_TOLERANCE:g}) on {parity.rows} rows"
        )
    return model, onnx_bytes, parity


def _same_model(existing: Manifest, candidate: Manifest) -> bool:
    """Tell whether two manifests describe the same model, ignoring bookkeeping fields."""
    mine = msgspec.structs.asdict(existing)
    theirs = msgspec.structs.asdict(candidate)
    return all(mine[key] == theirs[key] for key in mine if key not in _BOOKKEEPING_FIELDS)


def _existing_version(version_dir: Path, candidate: Manifest) -> tuple[Path, Manifest] | None:
    """Return a stored version if it holds the same model as ``candidate``, else None."""
    try:
        stored = read_manifest(version_dir / MANIFEST_FILE)
        stored_hash = sha256_file(version_dir / MODEL_FILE)
    except (ManifestError, OSError):
        return None
    if stored_hash == stored.onnx_sha256 and _same_model(stored, candidate):
        return version_dir, stored
    return None


def _numbered_versions(model_dir: Path) -> list[int]:
    """Return the N of every ``v<N>`` directory of a model, ascending."""
    if not model_dir.is_dir():
        return []
    numbers = (_VERSION_DIR.fullmatch(entry.name) for entry in model_dir.iterdir())
    return sorted(int(match.group(1)) for match in numbers if match)


def _write_version(out_repo: Path, target: Path, onnx_bytes: bytes, manifest: Manifest) -> None:
    """Write a version directory atomically: stage it in ``out_repo``, then rename it in place."""
    out_repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=out_repo))
    created_model_dir = not target.parent.exists()
    try:
        # mkdtemp makes the directory private (0700); a server running as another user must read it.
        staging.chmod(0o755)
        (staging / MODEL_FILE).write_bytes(onnx_bytes)
        write_manifest(staging / MANIFEST_FILE, manifest)
        target.parent.mkdir(exist_ok=True)
        # os.rename refuses to replace a non-empty directory, so a concurrent writer of the same
        # version makes this fail instead of mixing files.
        os.rename(staging, target)
    except OSError as ex:
        shutil.rmtree(staging, ignore_errors=True)
        if created_model_dir and target.parent.is_dir() and not any(target.parent.iterdir()):
            target.parent.rmdir()
        raise ConversionError(f"cannot write {target}: {ex}") from ex


@dataclass(frozen=True)
class PreparedModel:
    """A converted model that passed the gate, not yet written to a repository.

    Attributes:
        manifest: Its manifest; the version is provisional unless one was asked for.
        onnx_bytes: The serialised ONNX model.
        version_given: Whether the version was asked for (else ``v<N+1>`` is chosen on write).
    """

    manifest: Manifest
    onnx_bytes: bytes
    version_given: bool


@dataclass(frozen=True)
class StoredModel:
    """Where a prepared model ended up in the repository.

    Attributes:
        path: The version directory.
        manifest: The manifest stored there.
        written: False when an identical version was already stored (nothing was written).
    """

    path: Path
    manifest: Manifest
    written: bool


def prepare_model(
    booster: xgboost.Booster,
    *,
    feature_names: Sequence[str],
    name: str,
    kind: str,
    symbols: Sequence[str],
    strategies: Sequence[str],
    thresholds: Mapping[str, float],
    missing: str,
    source_path: Path,
    source_xgboost_version: str | None = None,
    metrics: Mapping[str, float] | None = None,
    version: str | None = None,
    description: str = "",
) -> PreparedModel:
    """Convert a booster and run the gate, writing nothing (the first half of `export_model`).

    Args:
        booster: The booster to convert.
        feature_names: The real feature names, in input-column order.
        name: Model name (first directory level).
        kind: Routing kind (see `convert.manifest.KINDS`).
        symbols: Symbols served; empty means all.
        strategies: Strategies served; empty means all.
        thresholds: Strategy -> decision threshold, with a ``default`` entry.
        missing: ``nan`` or ``zero``.
        source_path: The booster file, hashed and described in the manifest.
        source_xgboost_version: The XGBoost version that saved the booster, when the caller
            knows it (pickles); by default it is read from the JSON or UBJ file.
        metrics: Quality measures to record, e.g. ``{"auc": 0.71}``.
        version: Version label; by default chosen when the model is stored.
        description: Free text for the manifest.

    Returns:
        The gated model and its manifest.

    Raises:
        ConversionError: With the reason, if the booster is unsupported, the gate fails or the
            manifest values are invalid.
    """
    features = list(feature_names)
    model, onnx_bytes, parity = _run_gate(booster, len(features))
    try:
        manifest = Manifest(
            name=name,
            version=version or "v1",
            kind=kind,
            symbols=list(symbols),
            strategies=list(strategies),
            features=features,
            missing=missing,
            thresholds=dict(thresholds),
            onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
            source=_source_info(booster, Path(source_path), source_xgboost_version),
            converter=_converter_versions(model),
            parity=parity,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            metrics=dict(metrics or {}),
            description=description,
        )
    except ManifestError as ex:
        raise ConversionError(f"invalid manifest: {ex}") from ex
    return PreparedModel(manifest=manifest, onnx_bytes=onnx_bytes, version_given=bool(version))


def store_model(prepared: PreparedModel, out_repo: Path) -> StoredModel:
    """Add a prepared model to the repository, unless its newest version is the same model.

    Without an explicit version the model becomes ``v<N+1>`` after the highest ``v<N>``; if
    that newest version (or the explicit one) already holds the same model, nothing is written.
    The version directory appears whole (staged, then renamed), or not at all.

    Args:
        prepared: The output of `prepare_model`.
        out_repo: Root of the model repository; created if needed.

    Returns:
        The version directory, its manifest and whether anything was written.

    Raises:
        ConversionError: If the given version exists with another model, or the files cannot be
            written. Nothing is left in the repository.
    """
    candidate = prepared.manifest
    version = candidate.version if prepared.version_given else None
    # APPSEC: the repository is only looked at once the manifest has vetted name and version.
    model_dir = Path(out_repo) / candidate.name
    numbers = _numbered_versions(model_dir)
    if version is None and numbers:
        candidate = msgspec.structs.replace(candidate, version=f"v{numbers[-1] + 1}")
    compare_with = version or (f"v{numbers[-1]}" if numbers else None)
    if compare_with is not None and (model_dir / compare_with).exists():
        existing = _existing_version(model_dir / compare_with, candidate)
        if existing is not None:
            return StoredModel(path=existing[0], manifest=existing[1], written=False)
        if version is not None:
            raise ConversionError(f"{model_dir / version} already exists with a different model")
    target = model_dir / candidate.version
    _write_version(Path(out_repo), target, prepared.onnx_bytes, candidate)
    return StoredModel(path=target, manifest=candidate, written=True)


def export_model(
    booster: xgboost.Booster,
    *,
    feature_names: Sequence[str],
    out_repo: Path,
    name: str,
    kind: str,
    symbols: Sequence[str],
    strategies: Sequence[str],
    thresholds: Mapping[str, float],
    missing: str,
    source_path: Path,
    source_xgboost_version: str | None = None,
    metrics: Mapping[str, float] | None = None,
    version: str | None = None,
    description: str = "",
) -> tuple[Path, Manifest]:
    """Convert a booster and, if it passes the gate, add it to the model repository.

    The gate is: ``onnx.checker`` accepts the model, onnxruntime loads it, and its output matches
    ``Booster.predict`` within `PARITY_TOLERANCE` on at least `MIN_PARITY_ROWS` probe rows with
    missing values and values at and around every split threshold. Only then are ``model.onnx``
    and ``manifest.json`` written, together, to ``<out_repo>/<name>/<version>/``
    (`prepare_model`, then `store_model`).

    Args:
        booster: The booster to convert.
        feature_names: The real feature names, in input-column order.
        out_repo: Root of the model repository; created if needed.
        name: Model name (first directory level).
        kind: Routing kind (see `convert.manifest.KINDS`).
        symbols: Symbols served; empty means all.
        strategies: Strategies served; empty means all.
        thresholds: Strategy -> decision threshold, with a ``default`` entry.
        missing: ``nan`` or ``zero``.
        source_path: The booster file, hashed and described in the manifest.
        source_xgboost_version: The XGBoost version that saved the booster, when the caller
            knows it (pickles); by default it is read from the JSON or UBJ file.
        metrics: Quality measures to record, e.g. ``{"auc": 0.71}``.
        version: Version label; by default ``v<N+1>`` after the highest ``v<N>``. If the newest
            version (or the given one) already holds the same model, nothing is written.
        description: Free text for the manifest.

    Returns:
        The version directory and its manifest (the existing ones when nothing was written).

    Raises:
        ConversionError: With the reason, if the booster is unsupported, the gate fails, the
            manifest values are invalid, the given version exists with another model, or the
            files cannot be written. Nothing is left in the repository.
    """
    prepared = prepare_model(
        booster,
        feature_names=feature_names,
        name=name,
        kind=kind,
        symbols=symbols,
        strategies=strategies,
        thresholds=thresholds,
        missing=missing,
        source_path=source_path,
        source_xgboost_version=source_xgboost_version,
        metrics=metrics,
        version=version,
        description=description,
    )
    stored = store_model(prepared, out_repo)
    return stored.path, stored.manifest

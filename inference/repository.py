"""Load the model repository into onnxruntime sessions and route orders to models."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime as ort

from convert.manifest import Manifest, ManifestError, read_manifest
from kernels.assemble import GatherMaps
from kernels.registry import FeaturePlan, FeatureRegistry

from .errors import ModelLoadError

log = logging.getLogger(__name__)

#: Routing precedence (SPEC §5.2): the most specific model that serves an order answers it.
KIND_ORDER: Final = ("symbol_strategy", "symbol", "group", "default")
_VERSION_PART = re.compile(r"(\d+)")


def version_sort_key(version: str) -> tuple[Any, ...]:
    """Order ``v2`` < ``v10`` and ``1.2`` < ``1.10`` as people expect."""
    return tuple(int(part) if part.isdigit() else part for part in _VERSION_PART.split(version))


def session_options() -> ort.SessionOptions:
    """One intra-op thread per worker: workers, not threads, use the cores (SPEC §7)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


@dataclass(eq=False)
class LoadedModel:
    """One verified model, ready to score.

    Attributes:
        manifest: The repository manifest.
        path: Folder of the version.
        plan: How to assemble its feature matrix from the batch's columns.
        session: The onnxruntime session.
        label: ``<name>@<version>``, reported as ``model_version``.
    """

    manifest: Manifest
    path: Path
    plan: FeaturePlan
    session: ort.InferenceSession
    label: str
    input_name: str
    output_name: str
    zero_missing: bool
    _thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.maps = GatherMaps.of(self.plan)

    def threshold(self, strategy: str) -> float:
        """Decision threshold for a strategy (the manifest's ``default`` otherwise)."""
        return self._thresholds.get(strategy, self._thresholds["default"])

    def score(self, rows: np.ndarray) -> np.ndarray:
        """Return P(win) for float32 feature rows (C-contiguous, NaN = missing)."""
        output = self.session.run([self.output_name], {self.input_name: rows})[0]
        probabilities = np.asarray(output)
        if probabilities.ndim == 2:
            probabilities = probabilities[:, -1]
        return probabilities.astype(np.float64)

    def describe(self) -> dict[str, Any]:
        """What ``GET /models`` shows of this model."""
        manifest = self.manifest
        return {
            "name": manifest.name,
            "version": manifest.version,
            "label": self.label,
            "kind": manifest.kind,
            "routing": {"symbols": manifest.symbols, "strategies": manifest.strategies},
            "features": manifest.features,
            "n_features": len(manifest.features),
            "missing": manifest.missing,
            "thresholds": manifest.thresholds,
            "onnx_sha256": manifest.onnx_sha256,
            "source": manifest.source,
            "converter": manifest.converter,
            "parity": manifest.parity,
            "metrics": manifest.metrics,
            "created": manifest.created,
            "path": str(self.path),
        }


def load_model(path: Path, registry: FeatureRegistry) -> LoadedModel:
    """Load and verify one ``<name>/<version>`` folder.

    Raises:
        ModelLoadError: missing files, sha256 mismatch, unknown features, or an ONNX graph
            whose input does not match the manifest.
    """
    manifest_path = path / "manifest.json"
    model_path = path / "model.onnx"
    if not manifest_path.is_file() or not model_path.is_file():
        raise ModelLoadError(f"{path}: needs model.onnx and manifest.json")
    try:
        manifest = read_manifest(manifest_path)
    except (ManifestError, OSError, ValueError) as ex:
        raise ModelLoadError(f"{manifest_path}: {ex}") from ex
    # APPSEC: hash the very bytes onnxruntime gets, so the file cannot change between the two.
    model_bytes = model_path.read_bytes()
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != manifest.onnx_sha256:
        raise ModelLoadError(
            f"{model_path}: sha256 {digest[:12]}… does not match the manifest's "
            f"{manifest.onnx_sha256[:12]}…; refusing to serve it"
        )
    try:
        plan = registry.plan(manifest.features)
    except ValueError as ex:  # unknown or repeated feature names, all listed
        raise ModelLoadError(f"{manifest_path}: {ex}") from ex
    try:
        session = ort.InferenceSession(
            model_bytes,
            sess_options=session_options(),
            providers=["CPUExecutionProvider"],
        )
    except Exception as ex:  # onnxruntime raises its own untyped errors for bad graphs
        raise ModelLoadError(f"{model_path}: onnxruntime cannot load it: {ex}") from ex
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].shape[-1] not in (len(manifest.features), None, "None"):
        raise ModelLoadError(
            f"{model_path}: graph input {inputs[0].shape} does not take "
            f"{len(manifest.features)} features"
        )
    outputs = session.get_outputs()
    output = next((o for o in outputs if "prob" in o.name.lower()), outputs[-1])
    return LoadedModel(
        manifest=manifest,
        path=path,
        plan=plan,
        session=session,
        label=f"{manifest.name}@{manifest.version}",
        input_name=inputs[0].name,
        output_name=output.name,
        zero_missing=manifest.missing == "zero",
        _thresholds=dict(manifest.thresholds),
    )


@dataclass(eq=False)
class ModelSet:
    """The immutable set of models being served; replaced whole on reload.

    Attributes:
        models: Every loaded model.
        repository: Folder it was loaded from.
        loaded_at: When the set was built.
    """

    models: tuple[LoadedModel, ...]
    repository: Path
    loaded_at: datetime
    _routes: dict[tuple[str, str], LoadedModel | None] = field(default_factory=dict)
    _named_symbols: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        self._named_symbols = frozenset(
            symbol for model in self.models for symbol in model.manifest.symbols
        )

    def route(self, symbol: str, strategy: str) -> LoadedModel | None:
        """Return the model that answers (symbol, strategy), or None (SPEC §5.2)."""
        # APPSEC: clients choose the symbol; a symbol no manifest names can only reach a model
        # that serves every symbol, so all such symbols share one cache entry per strategy and
        # random symbols cannot grow the cache.
        key = (symbol if symbol in self._named_symbols else "", strategy)
        try:
            return self._routes[key]
        except KeyError:
            chosen = self._choose(symbol, strategy)
            self._routes[key] = chosen
            return chosen

    def _choose(self, symbol: str, strategy: str) -> LoadedModel | None:
        for kind in KIND_ORDER:
            candidates = [
                model
                for model in self.models
                if model.manifest.kind == kind and _serves(model.manifest, symbol, strategy)
            ]
            if candidates:
                # Newest first; name and version only break ties, so the choice is stable.
                return max(candidates, key=_newest)
        return None

    def warm(self) -> None:
        """Run every session at batch sizes 1 and 32 so the first request pays nothing."""
        for model in self.models:
            width = len(model.manifest.features)
            for rows in (1, 32):
                sample = np.zeros((rows, width), dtype=np.float32)
                sample[::2] = np.nan
                model.score(sample)


def _newest(model: LoadedModel) -> tuple[Any, ...]:
    manifest = model.manifest
    return (manifest.created, version_sort_key(manifest.version), manifest.name)


def _serves(manifest: Manifest, symbol: str, strategy: str) -> bool:
    """Whether a model serves an order: empty ``symbols``/``strategies`` lists mean all.

    Only a ``default`` model may leave ``symbols`` empty (the manifest insists), and a
    ``symbol_strategy`` model always lists its strategies.
    """
    return (not manifest.symbols or symbol in manifest.symbols) and (
        not manifest.strategies or strategy in manifest.strategies
    )


def newest_versions(repository: Path) -> Iterable[Path]:
    """Yield the newest version folder of every model name in the repository."""
    # Dot-folders are the converter's scratch space while it writes a version atomically.
    for name_dir in sorted(p for p in repository.iterdir() if p.is_dir() and p.name[0] != "."):
        versions = [p for p in name_dir.iterdir() if (p / "manifest.json").is_file()]
        if versions:
            yield max(versions, key=lambda p: version_sort_key(p.name))


def load_repository(repository: Path, registry: FeatureRegistry, warm: bool = True) -> ModelSet:
    """Load, verify and (by default) warm the newest version of every model.

    Raises:
        ModelLoadError: the folder is missing or empty, or any model fails verification
            (a repository is served whole or not at all).
    """
    if not repository.is_dir():
        raise ModelLoadError(f"model repository {repository} does not exist")
    try:
        models = tuple(load_model(path, registry) for path in newest_versions(repository))
    except OSError as ex:  # a file removed or unreadable while the repository is scanned
        raise ModelLoadError(f"model repository {repository}: {ex}") from ex
    if not models:
        raise ModelLoadError(f"model repository {repository} holds no model")
    model_set = ModelSet(models=models, repository=repository, loaded_at=datetime.now(UTC))
    if warm:
        model_set.warm()
    for model in models:
        log.info("model loaded", extra={"model": model.label, "kind": model.manifest.kind})
    return model_set

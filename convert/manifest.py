"""The manifest that describes one converted model in the repository."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import msgspec

KINDS = frozenset({"symbol_strategy", "symbol", "group", "default"})
MISSING_MODES = frozenset({"nan", "zero"})
DEFAULT_THRESHOLD_KEY = "default"

# APPSEC: name and version become directory names under the repository, so each must be one plain
# path component: no separators, no "..", no leading dot (staging and hidden entries have one).
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+-]*")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A manifest that cannot be read or whose values break the repository's rules."""


class SourceInfo(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where the ONNX model came from: the XGBoost file it was converted from.

    Attributes:
        file: File name of the booster, without its directory.
        format: Serialisation of the booster file: "json" or "ubj".
        sha256: Hex SHA-256 of the booster file's bytes.
        xgboost_version: XGBoost version recorded in the file ("unknown" if it records none).
        n_trees: Number of trees in the booster.
        max_depth: Depth of the deepest tree (a single leaf has depth 0).
        objective: Training objective, e.g. "binary:logistic".
        base_score: The booster's base score in probability space.
    """

    file: str
    format: str
    sha256: str
    xgboost_version: str
    n_trees: int
    max_depth: int
    objective: str
    base_score: float


class ParityInfo(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Outcome of comparing the ONNX graph with the booster it came from.

    Attributes:
        rows: Number of rows scored by both.
        max_abs_diff: Largest absolute difference between the two win probabilities.
        rows_with_missing: Rows holding at least one missing (NaN) value.
        threshold_rows: Rows holding at least one value exactly at a split threshold of its feature.
    """

    rows: int
    max_abs_diff: float
    rows_with_missing: int
    threshold_rows: int


class Manifest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The description of one model version: what it serves, what it needs and how it was made.

    Attributes:
        name: Model name, the first directory level of the repository.
        version: Version label, the second directory level (``v1``, ``v2``, ...).
        kind: Routing kind: ``symbol_strategy``, ``symbol``, ``group`` or ``default``.
        symbols: Symbols the model serves; empty means all.
        strategies: Strategies the model serves; empty means all.
        features: Feature names in the order of the model's input columns.
        missing: How missing inputs reach the model: ``nan`` (as NaN) or ``zero`` (filled by 0).
        thresholds: Decision threshold per strategy, plus ``default`` for the others.
        onnx_sha256: Hex SHA-256 of ``model.onnx``; the server refuses a file that does not match.
        source: The booster file the model was converted from.
        converter: Versions of the conversion tools and the ONNX opsets used, as strings.
        parity: Result of the parity check that gated the conversion.
        created: When the version was written, ISO-8601 in UTC with its offset.
        metrics: Quality measures such as the held-out AUC; may be empty.
        description: Free text for people.
    """

    name: str
    version: str
    kind: str
    symbols: list[str]
    strategies: list[str]
    features: list[str]
    missing: str
    thresholds: dict[str, float]
    onnx_sha256: str
    source: SourceInfo
    converter: dict[str, str]
    parity: ParityInfo
    created: str
    metrics: dict[str, float]
    description: str = ""

    def __post_init__(self) -> None:
        """Check the values, so an invalid manifest can be neither built nor decoded."""
        validate_manifest(self)


def validate_manifest(manifest: Manifest) -> None:
    """Check the values of a manifest against the repository's rules.

    Args:
        manifest: The manifest to check.

    Raises:
        ManifestError: Naming the first field that breaks a rule and why.
    """
    for field, value in (("name", manifest.name), ("version", manifest.version)):
        if not _PATH_COMPONENT.fullmatch(value) or value.endswith("."):
            raise ManifestError(
                f"{field} {value!r} must be one plain path component "
                "(letters, digits, space, '_', '.', '+', '-'; not starting with a dot)"
            )
    if manifest.kind not in KINDS:
        raise ManifestError(f"kind {manifest.kind!r} is not one of {sorted(KINDS)}")
    if manifest.kind in ("symbol_strategy", "symbol", "group") and not manifest.symbols:
        raise ManifestError(f"kind {manifest.kind!r} needs at least one symbol")
    if manifest.kind == "symbol_strategy" and not manifest.strategies:
        raise ManifestError("kind 'symbol_strategy' needs at least one strategy")
    if manifest.missing not in MISSING_MODES:
        raise ManifestError(f"missing {manifest.missing!r} is not one of {sorted(MISSING_MODES)}")
    if not manifest.features:
        raise ManifestError("features is empty")
    duplicated = sorted({name for name in manifest.features if manifest.features.count(name) > 1})
    if duplicated:
        raise ManifestError(f"features lists {duplicated} more than once")
    if DEFAULT_THRESHOLD_KEY not in manifest.thresholds:
        raise ManifestError(f"thresholds has no {DEFAULT_THRESHOLD_KEY!r} entry")
    for strategy, threshold in manifest.thresholds.items():
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise ManifestError(f"thresholds[{strategy!r}] = {threshold!r} is not within [0, 1]")
    if not _SHA256_HEX.fullmatch(manifest.onnx_sha256):
        raise ManifestError("onnx_sha256 is not 64 lower-case hex digits")


def read_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file.

    Args:
        path: Path of a ``manifest.json``.

    Returns:
        The decoded manifest.

    Raises:
        ManifestError: If the file cannot be read, is not valid JSON, has unknown, missing or
            mistyped fields, or breaks a value rule; the message names the file and the field.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as ex:
        raise ManifestError(f"{path}: cannot read the manifest: {ex}") from ex
    try:
        return msgspec.json.decode(data, type=Manifest, strict=True)
    except msgspec.DecodeError as ex:
        # ValidationError is a DecodeError; both name the field at fault, e.g. `$.parity.rows`.
        raise ManifestError(f"{path}: invalid manifest: {ex}") from ex


def encode_manifest(manifest: Manifest) -> bytes:
    """Encode a manifest as pretty, key-sorted JSON, so equal manifests give equal bytes.

    Args:
        manifest: The manifest to encode.

    Returns:
        UTF-8 JSON ending with a newline.
    """
    compact = msgspec.json.encode(manifest, order="sorted")
    return msgspec.json.format(compact, indent=2) + b"\n"


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write a manifest as pretty, key-sorted JSON.

    Args:
        path: Destination file; replaced if it exists.
        manifest: The manifest to write.
    """
    Path(path).write_bytes(encode_manifest(manifest))


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file's bytes.

    Args:
        path: The file to hash.

    Returns:
        64 lower-case hex digits.
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        # PERF: hash in 1 MiB blocks so large model files are never held in memory whole.
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

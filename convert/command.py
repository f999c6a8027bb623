"""The ``magic8 convert`` command: XGBoost booster files to the ONNX model repository."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import click

from convert.manifest import DEFAULT_THRESHOLD_KEY, KINDS, MISSING_MODES, Manifest
from convert.onnx_export import ConversionError, export_model, load_booster

KNOWN_FEATURES_KEY = "magic8.known_features"
"""Key of ``click.Context.meta`` under which the CLI group may put the feature registry's checker
(a ``Callable[[list[str]], None]`` raising ValueError that lists unknown names)."""

FeatureCheck = Callable[[list[str]], None]


def _read_feature_file(path: Path) -> list[str]:
    """Read a JSON list of feature names."""
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as ex:
        raise ConversionError(f"{path}: cannot read the feature list: {ex}") from ex
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConversionError(f"{path}: the feature list must be a JSON list of strings")
    return names


def convert_file(
    src: Path,
    out: Path,
    *,
    name: str | None,
    kind: str = "default",
    symbols: Sequence[str] = (),
    strategies: Sequence[str] = (),
    thresholds: Mapping[str, float] | None = None,
    missing: str = "nan",
    feature_names: Sequence[str] | None = None,
    known_features: FeatureCheck | None = None,
) -> Manifest:
    """Convert one ``.json``/``.ubj`` booster file into the model repository.

    Args:
        src: The booster file.
        out: Root of the model repository.
        name: Model name; by default the file's stem.
        kind: Routing kind.
        symbols: Symbols served; empty means all.
        strategies: Strategies served; empty means all.
        thresholds: Strategy -> decision threshold; ``default`` is 0.5 unless given.
        missing: ``nan`` or ``zero``.
        feature_names: Names to use when the booster carries none.
        known_features: Checker of the feature registry, raising ValueError that lists unknown
            names; called before converting.

    Returns:
        The manifest of the version written (or of the identical version already stored).

    Raises:
        ConversionError: With the reason, for any expected failure (unreadable file, missing or
            conflicting feature names, unknown features, failed gate, invalid manifest values).
    """
    booster = load_booster(src)
    if booster.feature_names:
        names = list(booster.feature_names)
        if feature_names is not None and list(feature_names) != names:
            raise ConversionError(
                f"{src}: the booster's feature names differ from the feature list given"
            )
    elif feature_names is not None:
        names = list(feature_names)
    else:
        raise ConversionError(f"{src}: the booster has no feature names; give a feature list")
    if known_features is not None:
        try:
            known_features(names)
        except ValueError as ex:
            raise ConversionError(f"{src}: {ex}") from ex
    _, manifest = export_model(
        booster,
        feature_names=names,
        out_repo=out,
        name=name or src.stem,
        kind=kind,
        symbols=symbols,
        strategies=strategies,
        thresholds={DEFAULT_THRESHOLD_KEY: 0.5, **(thresholds or {})},
        missing=missing,
        source_path=src,
    )
    return manifest


def _served(values: Sequence[str]) -> str:
    """Show a list of symbols or strategies, empty meaning all."""
    return ",".join(values) if values else "*"


def print_summary(manifests: Iterable[Manifest], file: TextIO | None = None) -> None:
    """Print a table of converted models.

    Args:
        manifests: The manifests to list, one row each.
        file: Where to print; standard output (as it is at call time) by default.
    """
    stream = sys.stdout if file is None else file
    header = (
        "name",
        "version",
        "kind",
        "symbols",
        "strategies",
        "features",
        "trees",
        "max |diff|",
        "thresholds",
    )
    rows = [header] + [
        (
            manifest.name,
            manifest.version,
            manifest.kind,
            _served(manifest.symbols),
            _served(manifest.strategies),
            str(len(manifest.features)),
            str(manifest.source.n_trees),
            f"{manifest.parity.max_abs_diff:.2e}",
            " ".join(f"{key}={value:g}" for key, value in sorted(manifest.thresholds.items())),
        )
        for manifest in manifests
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=stream,
        )


def _split_list(value: str | None) -> list[str]:
    """Split a comma-separated option into its non-empty items."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _parse_thresholds(values: Sequence[str]) -> dict[str, float]:
    """Parse ``--threshold`` values: ``0.6`` sets the default, ``Iron Condor=0.6`` a strategy."""
    thresholds: dict[str, float] = {}
    for value in values:
        strategy, _, number = value.rpartition("=")
        try:
            thresholds[strategy.strip() or DEFAULT_THRESHOLD_KEY] = float(number)
        except ValueError as ex:
            raise click.BadParameter(f"{value!r} is not a number or STRATEGY=NUMBER") from ex
    return thresholds


@click.command("convert")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Root of the model repository to write to.",
)
@click.option("--name", default=None, help="Model name (default: the file's stem).")
@click.option(
    "--kind",
    type=click.Choice(sorted(KINDS)),
    default="default",
    show_default=True,
    help="How the server routes orders to this model.",
)
@click.option("--symbols", default=None, help="Comma-separated symbols served (default: all).")
@click.option(
    "--strategies", default=None, help="Comma-separated strategies served (default: all)."
)
@click.option(
    "--threshold",
    "thresholds",
    multiple=True,
    help="Decision threshold: '0.6' for the default, 'STRATEGY=0.6' for one strategy; repeatable.",
)
@click.option(
    "--missing",
    type=click.Choice(sorted(MISSING_MODES)),
    default="nan",
    show_default=True,
    help="How the model was trained to see missing inputs.",
)
@click.option(
    "--features",
    "features_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON list of feature names, for boosters saved without them.",
)
@click.pass_context
def convert_command(
    ctx: click.Context,
    src: Path,
    out: Path,
    name: str | None,
    kind: str,
    symbols: str | None,
    strategies: str | None,
    thresholds: tuple[str, ...],
    missing: str,
    features_file: Path | None,
) -> None:
    """Convert an XGBoost booster (.json or .ubj) to ONNX in the model repository."""
    known_features: FeatureCheck | None = ctx.meta.get(KNOWN_FEATURES_KEY)
    try:
        manifest = convert_file(
            src,
            out,
            name=name,
            kind=kind,
            symbols=_split_list(symbols),
            strategies=_split_list(strategies),
            thresholds=_parse_thresholds(thresholds),
            missing=missing,
            feature_names=_read_feature_file(features_file) if features_file else None,
            known_features=known_features,
        )
    except ConversionError as ex:
        # Expected failures end with one line naming the reason, not a traceback.
        raise click.ClickException(str(ex).splitlines()[0] if str(ex) else repr(ex)) from ex
    print_summary([manifest])

"""The ``magic8 convert`` command: XGBoost booster files to the ONNX model repository."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import click

from convert.manifest import DEFAULT_THRESHOLD_KEY, KINDS, MISSING_MODES, Manifest
from convert.onnx_export import ConversionError, store_model
from convert.retraining import (
    DEFAULT_THRESHOLD,
    DIRECTORY_MISSING,
    FeatureCheck,
    RetrainingError,
    convert_directory,
    load_feature_file,
    prepare_source,
)

KNOWN_FEATURES_KEY = "magic8.known_features"
"""Key of ``click.Context.meta`` under which the CLI group may put the feature registry's checker
(a ``Callable[[list[str]], None]`` raising ValueError that lists unknown names)."""


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
    allow_pickle: bool = False,
) -> Manifest:
    """Convert one booster file into the model repository.

    Args:
        src: The booster file: ``.json``, ``.ubj``, or a pickle with ``allow_pickle``.
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
        allow_pickle: Whether a pickled booster may be loaded (restricted unpickler).

    Returns:
        The manifest of the version written (or of the identical version already stored).

    Raises:
        ConversionError: With the reason, for any expected failure (unreadable file, missing or
            conflicting feature names, unknown features, failed gate, invalid manifest values).
    """
    prepared = prepare_source(
        src,
        name=name or src.stem,
        kind=kind,
        symbols=symbols,
        strategies=strategies,
        thresholds={DEFAULT_THRESHOLD_KEY: DEFAULT_THRESHOLD, **(thresholds or {})},
        missing=missing,
        feature_names=feature_names,
        allow_pickle=allow_pickle,
        known_features=known_features,
    )
    return store_model(prepared, out).manifest


def _served(values: Sequence[str]) -> str:
    """Show a list of symbols or strategies, empty meaning all."""
    return ",".join(values) if values else "*"


def print_summary(
    manifests: Iterable[Manifest],
    file: TextIO | None = None,
    *,
    written: Sequence[bool] | None = None,
) -> None:
    """Print a table of converted models.

    Args:
        manifests: The manifests to list, one row each.
        file: Where to print; standard output (as it is at call time) by default.
        written: Per manifest, whether this run wrote it; adds a ``status`` column
            (``written`` or ``unchanged``) when given.
    """
    stream = sys.stdout if file is None else file
    header: tuple[str, ...] = (
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
    rows: list[tuple[str, ...]] = [
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
    if written is not None:
        header = ("status", *header)
        rows = [
            ("written" if new else "unchanged", *row)
            for new, row in zip(written, rows, strict=True)
        ]
    table = [header, *rows]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    for row in table:
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


# Options that describe one model, so they make no sense for a retraining directory.
_SINGLE_FILE_OPTIONS = ("name", "kind", "symbols", "strategies", "thresholds", "features_file")


@click.command("convert")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Root of the model repository to write to.",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    # APPSEC: only an explicit flag on the command line lets pickles in, never an environment
    # variable (the CLI otherwise reads every option from MAGIC8_<COMMAND>_<OPTION>).
    allow_from_autoenv=False,
    help="Load .pkl/.joblib models and feature lists, through a restricted unpickler that "
    "admits only an XGBoost Booster/XGBClassifier or a list of strings.",
)
@click.option(
    "--missing",
    type=click.Choice(sorted(MISSING_MODES)),
    default=None,
    help="How the model was trained to see missing inputs [default: zero for a retraining "
    "directory, whose trainer filled them with 0; nan for a single file].",
)
@click.option("--name", default=None, help="Model name (default: the file's stem).")
@click.option(
    "--kind",
    type=click.Choice(sorted(KINDS)),
    default=None,
    help="How the server routes orders to this model [default: default].",
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
    "--features",
    "features_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Feature list (JSON, or a pickle with --allow-pickle), for boosters saved without names.",
)
@click.pass_context
def convert_command(
    ctx: click.Context,
    src: Path,
    out: Path,
    allow_pickle: bool,
    missing: str | None,
    name: str | None,
    kind: str | None,
    symbols: str | None,
    strategies: str | None,
    thresholds: tuple[str, ...],
    features_file: Path | None,
) -> None:
    """Convert XGBoost models to ONNX in the model repository, or refuse with the reason.

    SRC is one model file (.json, .ubj; .pkl/.joblib with --allow-pickle) or a retraining
    directory ({SYM}_trades_model.*, {SYM}_{Strategy}_model.*, {A}_{B}_combined_model.*,
    *_features.*, thresholds.json, thresholds_grouped.json), converted all or nothing.
    """
    known_features: FeatureCheck | None = ctx.meta.get(KNOWN_FEATURES_KEY)
    if src.is_dir():
        given = [
            "--" + option.replace("_file", "").replace("thresholds", "threshold")
            for option in _SINGLE_FILE_OPTIONS
            if ctx.params[option] not in (None, ())
        ]
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply to a single model file")
        _convert_directory(src, out, allow_pickle, missing or DIRECTORY_MISSING, known_features)
        return
    try:
        manifest = convert_file(
            src,
            out,
            name=name,
            kind=kind or "default",
            symbols=_split_list(symbols),
            strategies=_split_list(strategies),
            thresholds=_parse_thresholds(thresholds),
            missing=missing or "nan",
            feature_names=(
                load_feature_file(features_file, allow_pickle=allow_pickle)
                if features_file
                else None
            ),
            known_features=known_features,
            allow_pickle=allow_pickle,
        )
    except ConversionError as ex:
        # Expected failures end with one line naming the reason, not a traceback.
        raise click.ClickException(str(ex).splitlines()[0] if str(ex) else repr(ex)) from ex
    print_summary([manifest])


def _convert_directory(
    src: Path, out: Path, allow_pickle: bool, missing: str, known_features: FeatureCheck | None
) -> None:
    """Convert a retraining directory, print the table and notes; exit non-zero on failure."""
    try:
        result = convert_directory(
            src, out, allow_pickle=allow_pickle, missing=missing, known_features=known_features
        )
    except RetrainingError as ex:
        # One line per problem, each already reduced to its reason.
        raise click.ClickException(str(ex)) from ex
    print_summary(
        [entry.manifest for entry in result.stored],
        written=[entry.written for entry in result.stored],
    )
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    added = sum(entry.written for entry in result.stored)
    click.echo(
        f"{added} new version(s), {len(result.stored) - added} unchanged, in {out} "
        f"(missing values as {missing})"
    )

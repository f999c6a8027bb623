"""Read pickled XGBoost models and feature lists without letting the pickle run anything."""

from __future__ import annotations

import bz2
import io
import lzma
import pickle
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Final, Protocol

import xgboost

from convert.onnx_export import (
    ConversionError,
    unreadable_booster_error,
    xgboost_version_in_ubj,
)

PICKLE_SUFFIXES: Final = frozenset({".pkl", ".pickle", ".joblib"})
"""File suffixes read as pickles (joblib writes plain pickles, optionally compressed)."""

# Largest pickle accepted after decompression; a real 200-tree booster is well under 5 MiB.
MAX_PICKLE_BYTES: Final = 256 * 1024 * 1024

# zlib streams (joblib's "zlib" compressor) start with 0x78 and one of these flag bytes.
_ZLIB_FLAGS: Final = frozenset({0x01, 0x5E, 0x9C, 0xDA})


# A truncated or corrupt pickle fails in many ways; none of them has run anything.
_CORRUPT_PICKLE: Final = (
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
)


class _Decompressor(Protocol):
    """The part of zlib's, bz2's and lzma's decompressor objects used here."""

    def decompress(self, data: bytes, max_length: int, /) -> bytes:
        """Decompress ``data``, returning at most ``max_length`` bytes."""


class _PickledBooster:
    """Stand-in for ``xgboost.core.Booster`` while unpickling: keeps the state, runs nothing."""

    state: dict[str, Any]

    def __new__(cls, *args: object) -> _PickledBooster:
        """Create an empty stand-in; a pickle that passes constructor arguments is refused."""
        # APPSEC: XGBoost pickles rebuild a Booster with NEWOBJ and no arguments, then BUILD;
        # anything else is a crafted pickle trying to call the constructor with its own values.
        if args:
            raise pickle.UnpicklingError(f"{cls.__name__} is rebuilt with constructor arguments")
        instance = super().__new__(cls)
        instance.state = {}
        return instance

    def __setstate__(self, state: object) -> None:
        """Keep the state dict (the serialised model is under ``handle``)."""
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("Booster state is not a dict")
        self.state = state


class _PickledClassifier(_PickledBooster):
    """Stand-in for ``xgboost.sklearn.XGBClassifier``: its parameters and fitted ``_Booster``."""


def _latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
    """Do what protocol-2 pickles of ``bytes`` ask of ``_codecs.encode``, and nothing more."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is only admitted for latin1 text")
    return text.encode("latin1")


# APPSEC: every global a pickle may name, found by pickling real Boosters and XGBClassifiers
# with XGBoost 3.x under protocols 2 to 5 and through joblib: the two model classes (replaced by
# stand-ins that only record their state), bytearray for the serialised model, _codecs.encode
# for protocol 2's way of writing bytes, and OrderedDict for the classifier's evals_result_.
# Nothing that can reach the file system, a process, an import or an attribute lookup.
_ADMITTED: Final[dict[tuple[str, str], object]] = {
    ("xgboost.core", "Booster"): _PickledBooster,
    ("xgboost.sklearn", "XGBClassifier"): _PickledClassifier,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "bytearray"): bytearray,
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the admitted globals and no persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        """Return the admitted object for ``module.name``; refuse every other global.

        Raises:
            pickle.UnpicklingError: Naming the refused global.
        """
        admitted = _ADMITTED.get((module, name))
        if admitted is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not admitted")
        return admitted

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids: an XGBoost pickle has none.

        Raises:
            pickle.UnpicklingError: Always.
        """
        raise pickle.UnpicklingError("it uses persistent ids, which are not admitted")


def _decompressor(head: bytes) -> _Decompressor | None:
    """Pick the decompressor of a joblib file from its first bytes (None: not compressed)."""
    # joblib compresses with a standard codec and no framing of its own.
    if head.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(wbits=31)
    if head[:1] == b"\x78" and len(head) > 1 and head[1] in _ZLIB_FLAGS:
        return zlib.decompressobj()
    if head.startswith(b"BZh"):
        return bz2.BZ2Decompressor()
    if head.startswith((b"\xfd7zXZ", b"\x5d\x00\x00")):
        return lzma.LZMADecompressor()
    return None


def _read_pickle_bytes(path: Path) -> bytes:
    """Read a pickle file, decompressing joblib's gzip, zlib, bz2, xz and lzma files."""
    try:
        data = path.read_bytes()
        decompressor = _decompressor(data[:6])
        if decompressor is not None:
            # APPSEC: stop one byte past the limit, so a decompression bomb cannot fill memory.
            data = decompressor.decompress(data, MAX_PICKLE_BYTES + 1)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as ex:
        raise ConversionError(f"{path}: cannot read the pickle: {ex}") from ex
    if len(data) > MAX_PICKLE_BYTES:
        raise ConversionError(f"{path}: the pickle exceeds {MAX_PICKLE_BYTES} bytes")
    return data


def _unpickle(path: Path) -> object:
    """Unpickle a file with `_RestrictedUnpickler`, mapping every failure to ConversionError."""
    data = _read_pickle_bytes(path)
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as ex:
        raise ConversionError(f"{path}: refused to unpickle: {ex}") from ex
    except _CORRUPT_PICKLE as ex:
        raise ConversionError(f"{path}: not a readable pickle ({type(ex).__name__}: {ex})") from ex
    except (MemoryError, RecursionError) as ex:
        raise ConversionError(f"{path}: not a readable pickle ({type(ex).__name__})") from ex


def _serialised_model(path: Path, loaded: object) -> tuple[bytes, bool]:
    """Return the serialised booster a pickled Booster or XGBClassifier holds, and which it was."""
    from_classifier = isinstance(loaded, _PickledClassifier)
    if isinstance(loaded, _PickledClassifier):
        n_classes = loaded.state.get("n_classes_", 2)
        if n_classes != 2:
            raise ConversionError(f"{path}: the XGBClassifier has {n_classes} classes, not 2")
        loaded = loaded.state.get("_Booster")
        if not isinstance(loaded, _PickledBooster) or isinstance(loaded, _PickledClassifier):
            raise ConversionError(f"{path}: the XGBClassifier holds no fitted Booster")
    if not isinstance(loaded, _PickledBooster):
        raise ConversionError(
            f"{path}: the pickle holds a {type(loaded).__name__}, not an XGBoost Booster or "
            "XGBClassifier"
        )
    handle = loaded.state.get("handle")
    if not isinstance(handle, bytes | bytearray) or not handle:
        raise ConversionError(f"{path}: the pickled Booster holds no model")
    return bytes(handle), from_classifier


def load_pickled_booster(path: Path) -> tuple[xgboost.Booster, str]:
    """Load a Booster or XGBClassifier pickled by XGBoost (``pickle`` or ``joblib``).

    Only the globals such pickles need are resolved, and the model classes are replaced by
    stand-ins while unpickling, so a crafted pickle can neither call anything nor run XGBoost
    code: the serialised model is handed to XGBoost only once the pickle's shape is checked.

    An XGBClassifier fitted with early stopping answers ``predict_proba`` with the trees up to
    its best round only, so its booster is cut there: the converted model is the classifier's.

    Args:
        path: A ``.pkl``, ``.pickle`` or ``.joblib`` file.

    Returns:
        The booster, and the XGBoost version that serialised it ("unknown" if not recorded).

    Raises:
        ConversionError: If the pickle names anything else, is truncated or corrupt, holds
            something other than a Booster or a binary XGBClassifier, or XGBoost cannot read
            the model inside.
    """
    path = Path(path)
    serialised, from_classifier = _serialised_model(path, _unpickle(path))
    booster = xgboost.Booster.__new__(xgboost.Booster)
    booster.handle = None
    try:
        # Booster.__setstate__ is how XGBoost's own unpickling restores the model buffer.
        booster.__setstate__({"handle": bytearray(serialised)})
    except xgboost.core.XGBoostError as ex:
        raise unreadable_booster_error(path, str(ex)) from ex
    except UnicodeDecodeError as ex:
        # As in load_booster: XGBoost's message can quote a raw byte that is not UTF-8.
        message = bytes(ex.object).decode("utf-8", errors="replace")
        raise unreadable_booster_error(path, message) from ex
    if from_classifier:
        booster = _as_predict_proba(booster)
    return booster, xgboost_version_in_ubj(serialised)


def _as_predict_proba(booster: xgboost.Booster) -> xgboost.Booster:
    """Keep the trees ``XGBClassifier.predict_proba`` uses: up to the best early-stopping round."""
    best = booster.attr("best_iteration")
    if best is None or int(best) + 1 >= booster.num_boosted_rounds():
        return booster
    # The classifier ignores the trees grown after its best round; so must the served model.
    return booster[: int(best) + 1]


def load_pickled_feature_list(path: Path) -> list[str]:
    """Load a feature list pickled as a plain Python list of strings.

    Args:
        path: A ``.pkl``, ``.pickle`` or ``.joblib`` file.

    Returns:
        The feature names, in order.

    Raises:
        ConversionError: If the pickle names any global, is unreadable, or is not a list of
            strings.
    """
    path = Path(path)
    loaded = _unpickle(path)
    if not isinstance(loaded, list) or not all(isinstance(name, str) for name in loaded):
        raise ConversionError(f"{path}: the feature list must be a pickled list of strings")
    return list(loaded)

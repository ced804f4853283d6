"""Persisted user settings of the SGP-SAM module, behind a Qt-free interface.

The widget injects the store: in Slicer ``QSettingsStore(qt.QSettings())`` (values survive a
restart, under ``SGPSAM/<key>`` in Slicer's settings file); in tests a plain ``dict``. Every
value is validated and converted on the way in and out, because QSettings hands back strings
on some platforms ("true", "1") and a hand-edited settings file may hold anything: an invalid
stored value falls back to the default (logged), it never breaks the module.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Callable

from SGPSAMLib.options import MODALITIES, PROMPT_MODES

__all__ = ["Setting", "SETTINGS", "Settings", "QSettingsStore", "PREFIX", "DEVICES",
           "MODALITIES", "PROMPT_MODES"]

log = logging.getLogger(__name__)

#: Group of every key in the store (QSettings shows it as a section).
PREFIX = "SGPSAM/"
DEVICES = ("auto", "cpu", "cuda")
LOCAL_MODEL = "local"


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _to_str(value: Any) -> str:
    if value is None:
        return ""
    return str(value)


@dataclass(frozen=True)
class Setting:
    """One persisted value: its default, converter and (optional) allowed values."""

    key: str
    default: Any
    convert: Callable[[Any], Any]
    choices: tuple[Any, ...] | None = None
    help: str = ""

    def clean(self, value: Any) -> Any:
        """The converted value, or ValueError naming the key and what is allowed."""
        try:
            converted = self.convert(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"setting {self.key!r}: {exc}") from exc
        if self.choices is not None and converted not in self.choices:
            raise ValueError(f"setting {self.key!r} must be one of {list(self.choices)}, "
                             f"got {value!r}")
        return converted


SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("model", "demo", _to_str, None,
            "a name from SGPSAMLib.models.KNOWN_MODELS, or 'local' for checkpointPath"),
    Setting("checkpointPath", "", _to_str, None, "checkpoint file used when model is 'local'"),
    Setting("device", "auto", _to_str, DEVICES, "torch device: auto (GPU if any), cpu, cuda"),
    Setting("modality", "auto", _to_str, MODALITIES,
            "intensity normalisation: auto (CT if the minimum < -500), CT or MR"),
    Setting("promptMode", "latest", _to_str, PROMPT_MODES,
            "latest: newest click + previous mask (SAM-Med3D); cumulative: all clicks"),
    Setting("keepClickedComponents", True, _to_bool, None,
            "drop predicted components no positive click touches (False: keep all)"),
    Setting("zoomToLesion", True, _to_bool, None,
            "pick a new lesion's crop spacing by the model's zoom policy (False: fixed)"),
    Setting("downloadConsent", False, _to_bool, None,
            "the user accepted the SAM-Med3D-turbo licence and download once"),
)}


class Settings:
    """Typed access to the module's settings in an injected key-value store.

    Args:
        store: any ``MutableMapping[str, Any]`` (a dict in tests, :class:`QSettingsStore` in
            Slicer). Keys are stored as ``PREFIX + key``.
    """

    def __init__(self, store: MutableMapping[str, Any] | None = None) -> None:
        self._store: MutableMapping[str, Any] = {} if store is None else store

    def __getitem__(self, key: str) -> Any:
        spec = self._spec(key)
        raw = self._store.get(PREFIX + key, None)
        if raw is None:
            return spec.default
        try:
            return spec.clean(raw)
        except ValueError as exc:
            log.warning("ignoring stored value: %s; using the default %r", exc, spec.default)
            return spec.default

    def __setitem__(self, key: str, value: Any) -> None:
        self._store[PREFIX + key] = self._spec(key).clean(value)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in SETTINGS else default

    def update(self, values: dict[str, Any]) -> None:
        """Set several values; nothing is stored if any of them is invalid."""
        cleaned = {key: self._spec(key).clean(value) for key, value in values.items()}
        for key, value in cleaned.items():
            self._store[PREFIX + key] = value

    def reset(self, key: str) -> None:
        """Forget a stored value (the default applies again)."""
        self._spec(key)
        self._store.pop(PREFIX + key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(SETTINGS)

    def model_spec(self) -> str:
        """What to pass to ``SGPSAMLib.models.resolve_model``: a known name or a file path."""
        if self["model"] == LOCAL_MODEL:
            return self["checkpointPath"]
        return self["model"]

    @staticmethod
    def _spec(key: str) -> Setting:
        spec = SETTINGS.get(key)
        if spec is None:
            raise KeyError(f"unknown setting {key!r}; known: {', '.join(SETTINGS)}")
        return spec


class QSettingsStore(MutableMapping):
    """A ``MutableMapping`` over a QSettings-like object (duck-typed: no Qt import here).

    ``qsettings`` needs ``value(key)``, ``setValue(key, value)``, ``contains(key)``,
    ``remove(key)`` and ``allKeys()``; values are written as strings/bools as QSettings does.
    """

    def __init__(self, qsettings: Any) -> None:
        self._q = qsettings

    def __getitem__(self, key: str) -> Any:
        if not self._q.contains(key):
            raise KeyError(key)
        return self._q.value(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._q.setValue(key, value)

    def __delitem__(self, key: str) -> None:
        if not self._q.contains(key):
            raise KeyError(key)
        self._q.remove(key)

    def __iter__(self) -> Iterator[str]:
        return iter([key for key in self._q.allKeys() if key.startswith(PREFIX)])

    def __len__(self) -> int:
        return sum(1 for _ in self)

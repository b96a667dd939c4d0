"""Source language detection for ``source_lang: "auto"``, run in the workers.

The detector is py3langid, whose model ships inside its wheel, so nothing is
downloaded at run time. It needs numpy and about 80 MB, which is why it runs
in the workers and never in the API process. Callers may restrict detection to
candidate languages; an empty list means every language py3langid supports.
Results are cached under their own keys, so a repeated ``auto`` request is
served without a worker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

DETECTOR_NAME = "py3langid-0.4.0"
DETECTION_KEY_VERSION = 1
UNDETERMINED = "und"

_identifier: Any = None
_identifier_languages: tuple[str, ...] | None = None
_lock = threading.Lock()


@dataclass(frozen=True)
class Detection:
    """A detected language and the detector's normalised probability."""

    language: str | None
    confidence: float


def detection_key(text: str, candidates: Sequence[str]) -> str:
    """Return the cache key of one detection, the same in every process."""
    material = {
        "v": DETECTION_KEY_VERSION,
        "kind": "detect",
        "detector": DETECTOR_NAME,
        "candidates": sorted(candidates),
        "text": unicodedata.normalize("NFC", text),
    }
    encoded = json.dumps(material, sort_keys=True, ensure_ascii=False)
    return "detect-" + hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def _load(candidates: tuple[str, ...]) -> Any:
    global _identifier, _identifier_languages
    with _lock:
        if _identifier is None:
            import py3langid.langid as langid_module

            model_path = os.path.join(
                os.path.dirname(langid_module.__file__), langid_module.MODEL_FILE
            )
            _identifier = langid_module.LanguageIdentifier.from_modelpath(
                model_path, norm_probs=True
            )
            logger.info("Loaded the language detector %s", DETECTOR_NAME)
        if _identifier_languages != candidates:
            known = set(_identifier.nb_classes)
            usable = [code for code in candidates if code in known]
            _identifier.set_languages(usable or None)
            _identifier_languages = candidates
        return _identifier


def detect(texts: Sequence[str], candidates: Sequence[str]) -> list[Detection]:
    """Detect the language of each text among ``candidates`` (base codes).

    An empty ``candidates`` considers every language py3langid supports.

    Texts without letters get ``Detection(None, 0.0)``.
    """
    bases = tuple(sorted({code.split("-", 1)[0].lower() for code in candidates}))
    identifier = _load(bases)
    results = []
    for text in texts:
        if not any(character.isalpha() for character in text):
            results.append(Detection(None, 0.0))
            continue
        language, confidence = identifier.classify(text)
        if language == UNDETERMINED:
            results.append(Detection(None, float(confidence)))
        else:
            results.append(Detection(str(language), round(float(confidence), 4)))
    return results

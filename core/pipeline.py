"""The translation pipeline, shared by front ends and workers.

Front ends run it with ``worker=False``: it only looks texts up in the cache
and leaves the misses as None. Workers run the same code with ``worker=True``
and translate the misses. Because both use one implementation, a cache key is
always computed the same way in every process.

Routes:

- one checkpoint, direct or multi-target: one cache entry per text;
- a pivot through English without ``do_not_translate`` or ``glossary``: two
  chained direct translations, each cached as its own pair, so the hops also
  serve direct requests;
- a pivot with terms: the text is masked once, carried through both hops and
  cached under a key that combines both checkpoints.

``source_lang: "auto"`` detects the language per text in the workers and
caches the detection, so a front end serves a repeated request alone.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from core import models, singleflight, workers
from core.cache import CacheHit, KeyContext, get_cache
from core.detection import detection_key
from core.errors import UnsupportedLanguagePair
from core.languages import base_language
from core.models import CheckpointRef
from core.options import TranslationOptions
from core.segmentation import has_letters

logger = logging.getLogger(__name__)

AUTO = "auto"
PIVOT = models.PIVOT_LANGUAGE
Item = dict[str, Any]
ProgressCallback = Callable[[int], None]


def needs_model(text: str) -> bool:
    """True when a text has a run of two letters for the model to translate."""
    return has_letters(text)


def passthrough_item(text: str) -> Item:
    """Return the item of a text that is copied unchanged, without a model."""
    return {
        "translation": text,
        "model": None,
        "models": [],
        "score": None,
        "cached": False,
    }


OUTCOME_FAILED = "failed"
OUTCOME_UNCHANGED = "unchanged"
OUTCOME_CACHED = "cached"
OUTCOME_TRANSLATED = "translated"


def item_outcome(item: Item) -> str:
    """Classify an item for summaries: failed, unchanged, cached or translated.

    ``unchanged`` covers every text copied without a model: empty, without
    words, already in the target language, or made only of protected spans.
    """
    if item.get("error"):
        return OUTCOME_FAILED
    if item.get("model") is None:
        return OUTCOME_UNCHANGED
    if item.get("cached"):
        return OUTCOME_CACHED
    return OUTCOME_TRANSLATED


def _public(value: dict[str, Any], cached: bool, tier: str | None) -> Item:
    item = {name: entry for name, entry in value.items() if name != "g"}
    item["cached"] = cached
    if tier is not None:
        item["cache_tier"] = tier
    return item


# Detection considers every language the detector supports, so a text in a
# language this deployment does not serve is reported as such instead of being
# forced onto the nearest served language.
ALL_LANGUAGES: tuple[str, ...] = ()
# NOTE: chosen by hand for py3langid's normalised probabilities over all its
# languages: clear sentences score above 0.9, while a word like "ok" scores
# far lower. Below it a text is reported as undetected.
MIN_DETECTION_CONFIDENCE = 0.3


def detection_candidates(target_lang: str) -> list[str]:
    """Languages ``auto`` may detect: every served source, plus the target."""
    sources = {base_language(source) for source, _ in models.served_pairs()}
    return sorted(sources | {base_language(target_lang)})


def detection_text(text: str, options: TranslationOptions) -> str:
    """Return the part of a text to detect the language of: text nodes for HTML."""
    if options.format != "html":
        return text
    from core import markup

    return " ".join(markup.extract(text).texts)


class Pipeline:
    """Translate or look up texts for one request's options."""

    def __init__(
        self,
        options: TranslationOptions | None = None,
        *,
        worker: bool,
        progress: ProgressCallback | None = None,
        group_size: int = 64,
        owner: str | None = None,
    ) -> None:
        self.options = options or TranslationOptions()
        # Marks the in-flight keys of this run; a task passes its id, so a
        # redelivered task takes back the keys its first delivery held.
        self.owner = owner or uuid.uuid4().hex
        self.option_key = self.options.key()
        self.worker = worker
        self.progress = progress
        self.group_size = max(1, group_size)
        self.done = 0

    # Entry point.

    def run(
        self, texts: Sequence[str], source_lang: str, target_lang: str
    ) -> list[Item | None]:
        """Return one item per text, in order; None for a miss in a front end."""
        items: list[Item | None] = [None] * len(texts)
        wanted = []
        for index, text in enumerate(texts):
            if needs_model(text):
                wanted.append(index)
            else:
                items[index] = passthrough_item(text)
        self._advance(len(texts) - len(wanted))
        if not wanted:
            return items

        subset = [texts[index] for index in wanted]
        if source_lang == AUTO:
            results = self._run_auto(subset, target_lang)
        else:
            results = self._run_pair(
                subset, source_lang, target_lang, final=True, explicit=True
            )
        for index, result in zip(wanted, results, strict=True):
            items[index] = result
        return items

    def _advance(self, count: int) -> None:
        if count <= 0:
            return
        self.done += count
        if self.progress is not None:
            self.progress(self.done)

    # Language detection.

    def _run_auto(self, texts: list[str], target_lang: str) -> list[Item | None]:
        probes = [detection_text(text, self.options) for text in texts]
        detections = self._detect(probes, list(ALL_LANGUAGES))
        items: list[Item | None] = [None] * len(texts)
        groups: dict[str, list[int]] = {}
        for index, detection in enumerate(detections):
            if detection is None:
                continue
            language = detection["language"]
            if language is None or detection["confidence"] < MIN_DETECTION_CONFIDENCE:
                items[index] = self._undetected(texts[index], detection)
                self._advance(1)
            elif language == base_language(target_lang):
                items[index] = {**passthrough_item(texts[index]), **_fields(detection)}
                self._advance(1)
            else:
                groups.setdefault(language, []).append(index)

        for language, indexes in groups.items():
            results = self._run_detected(
                [texts[index] for index in indexes], language, target_lang
            )
            for index, result in zip(indexes, results, strict=True):
                detection = detections[index]
                if result is not None and detection is not None:
                    result = {**result, **_fields(detection)}
                items[index] = result
        return items

    def _run_detected(
        self, texts: list[str], language: str, target_lang: str
    ) -> list[Item | None]:
        try:
            return self._run_pair(texts, language, target_lang, final=True)
        except UnsupportedLanguagePair as error:
            self._advance(len(texts))
            return [
                {**passthrough_item(text), "error": error.message} for text in texts
            ]

    def _undetected(self, text: str, detection: dict[str, Any]) -> Item:
        return {
            **passthrough_item(text),
            **_fields(detection),
            "error": "The language of this text could not be detected. "
            "Send it again with an explicit source_lang.",
        }

    def _detect(
        self, texts: list[str], candidates: list[str]
    ) -> list[dict[str, Any] | None]:
        return detect_with_cache(
            texts, candidates, run_detector=self.worker, use_cache=self.options.cache
        )

    # Routes.

    def _run_pair(
        self,
        texts: list[str],
        source: str,
        target: str,
        *,
        final: bool,
        explicit: bool = False,
    ) -> list[Item | None]:
        try:
            route = models.resolve_route(source, target)
        except UnsupportedLanguagePair:
            # A front end accepted this pair, so its settings serve it. A worker
            # whose own settings do not try the direct checkpoint anyway and,
            # without one, fails with the fix in ModelNotAvailable.
            if not (explicit and self.worker):
                raise
            name = models.checkpoint_name(source, target)
            route = [CheckpointRef(name, source, target, None)]
        if len(route) == 1 or self.options.has_terms:
            return self._run_keyed(texts, route, final=final)
        return self._run_chain(texts, route)

    def _run_chain(
        self, texts: list[str], route: list[CheckpointRef]
    ) -> list[Item | None]:
        first = self._run_keyed(texts, route[:1], final=False)
        items: list[Item | None] = [None] * len(texts)
        ready = [index for index, item in enumerate(first) if item is not None]
        middle = [first[index]["translation"] for index in ready]  # type: ignore[index]
        second = self._run_keyed(middle, route[1:], final=True) if middle else []
        self._advance(len(texts) - len(ready))
        for index, last in zip(ready, second, strict=True):
            head = first[index]
            if head is None or last is None:
                continue
            items[index] = _chain_item(head, last, route)
        return items

    def _context(self, route: list[CheckpointRef]) -> KeyContext | None:
        fingerprints = []
        for ref in route:
            fingerprint = self._fingerprint(ref)
            if fingerprint is None:
                return None
            fingerprints.append(fingerprint)
        source, target = route[0].source, route[-1].target
        return KeyContext.build(source, target, "+".join(fingerprints))

    def _fingerprint(self, ref: CheckpointRef) -> str | None:
        fingerprint: str | None
        if ref.path is not None:
            fingerprint = models.checkpoint_fingerprint(ref.path)
        else:
            fingerprint = workers.published_fingerprint(ref.source, ref.target)
        if fingerprint is None and self.worker:
            fingerprint = models.load_checkpoint(ref).fingerprint
        if fingerprint is not None and self.worker:
            workers.publish_fingerprint_throttled(ref.source, ref.target, fingerprint)
        return fingerprint

    def _run_keyed(
        self, texts: list[str], route: list[CheckpointRef], *, final: bool
    ) -> list[Item | None]:
        context = self._context(route)
        items: list[Item | None] = [None] * len(texts)
        if context is None:
            if not self.worker:
                return items
            raise models.model_not_available(route[0].source, route[-1].target)

        keys = [context.key(text, self.option_key) for text in texts]
        hits = get_cache().get_many(keys) if self.options.cache else {}
        misses: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            hit = hits.get(key)
            if hit is None:
                misses.setdefault(texts[index], []).append(index)
            else:
                items[index] = _public(hit.value, True, hit.tier)
        if final:
            self._advance(len(texts) - sum(len(group) for group in misses.values()))
        if not self.worker or not misses:
            return items

        by_text = {text: context.key(text, self.option_key) for text in misses}
        # Other workers wait for cache entries, which cache: false never writes.
        owned = (
            singleflight.acquire(list(by_text.values()), self.owner)
            if self.options.cache
            else set(by_text.values())
        )
        mine = [text for text in misses if by_text[text] in owned]
        try:
            with singleflight.Holder(by_text[text] for text in mine):
                self._translate_groups(mine, route, by_text, misses, items, final)
        finally:
            singleflight.release(by_text[text] for text in mine)

        # Another worker is translating the rest: wait for its cache entries.
        others = [text for text in misses if by_text[text] not in owned]
        if others:
            left = self._wait_for_owners(others, by_text, misses, items, final)
            self._translate_groups(left, route, by_text, misses, items, final)
        return items

    def _translate_groups(
        self,
        texts: list[str],
        route: list[CheckpointRef],
        keys: dict[str, str],
        misses: dict[str, list[int]],
        items: list[Item | None],
        final: bool,
    ) -> None:
        for start in range(0, len(texts), self.group_size):
            group = texts[start : start + self.group_size]
            values = self._translate(group, route)
            logger.info(
                "Translated %d texts with %s",
                len(group),
                "+".join(r.name for r in route),
            )
            if self.options.cache:
                get_cache().set_many(
                    {
                        keys[text]: value
                        for text, value in zip(group, values, strict=True)
                    }
                )
            for text, value in zip(group, values, strict=True):
                for index in misses[text]:
                    items[index] = _public(value, False, None)
            if final:
                self._advance(sum(len(misses[text]) for text in group))

    def _wait_for_owners(
        self,
        texts: list[str],
        keys: dict[str, str],
        misses: dict[str, list[int]],
        items: list[Item | None],
        final: bool,
    ) -> list[str]:
        """Fill the items other workers cached; return the texts still missing."""
        hits: dict[str, CacheHit] = {}

        def fetch(wanted: list[str]) -> set[str]:
            found = get_cache().get_many(wanted)
            hits.update(found)
            return set(found)

        left = singleflight.wait_for_owners([keys[text] for text in texts], fetch)
        missing = []
        for text in texts:
            hit = hits.get(keys[text])
            if hit is None or keys[text] in left:
                missing.append(text)
                continue
            for index in misses[text]:
                items[index] = _public(hit.value, True, hit.tier)
            if final:
                self._advance(len(misses[text]))
        if missing:
            logger.info("Translating %d texts whose other owner failed", len(missing))
        return missing

    # Translation, in workers only.

    def _translate(self, texts: list[str], route: list[CheckpointRef]) -> list[Item]:
        """Translate texts through every checkpoint of a route, masking spans once."""
        from core import markup, protect
        from core.translator import translate_texts_scored

        units = []
        strings: list[str] = []
        for text in texts:
            if self.options.format == "html":
                document = markup.extract(text)
                nodes = list(document.texts)
            else:
                document, nodes = None, [text]
            masked = [
                protect.mask(node, self.options.do_not_translate, self.options.glossary)
                for node in nodes
            ]
            units.append((document, masked, len(strings)))
            strings.extend(entry.text for entry in masked)

        all_masked = [entry for _, masked, _ in units for entry in masked]
        wanted = self._model_inputs(all_masked)
        outputs = list(strings)
        scores: list[float | None] = [None] * len(strings)
        for ref in route:
            if not wanted:
                break
            loaded = models.load_checkpoint(ref)
            scored = translate_texts_scored(
                loaded, [outputs[index] for index in wanted], ref.source
            )
            for index, entry in zip(wanted, scored, strict=True):
                outputs[index] = entry.text
                scores[index] = _multiply(scores[index], entry.score)

        names = [ref.name for ref in route]
        return [
            self._finish(document, masked, outputs, scores, offset, names)
            for document, masked, offset in units
        ]

    def _model_inputs(self, masked: list[Any]) -> list[int]:
        """Indexes of the masked strings with words left outside placeholders."""
        from core import protect

        return [
            index
            for index, entry in enumerate(masked)
            if needs_model(protect.without_placeholders(entry))
        ]

    def _finish(
        self,
        document: Any,
        masked: list[Any],
        outputs: list[str],
        scores: list[float | None],
        offset: int,
        names: list[str],
    ) -> Item:
        from core import protect

        restored = []
        unrestored: list[dict[str, str]] = []
        for position, entry in enumerate(masked):
            result = protect.unmask(outputs[offset + position], entry)
            restored.append(result.text)
            unrestored.extend(result.unrestored)
        translation = document.render(restored) if document is not None else restored[0]
        weights = [len(entry.text) for entry in masked]
        node_scores = scores[offset : offset + len(masked)]
        score = _weighted_score(node_scores, weights)
        reached_model = any(value is not None for value in node_scores)
        item: Item = {
            "translation": translation,
            "model": names[-1] if reached_model else None,
            "models": names if reached_model else [],
            "score": score,
        }
        if len(names) > 1 and reached_model:
            item["pivot"] = PIVOT
        if unrestored:
            item["unrestored"] = unrestored
        return item


def detect_with_cache(
    texts: Sequence[str],
    candidates: Sequence[str],
    *,
    run_detector: bool,
    use_cache: bool = True,
) -> list[dict[str, Any] | None]:
    """Return ``{"language", "confidence"}`` per text from the detection cache.

    With ``run_detector`` (workers only, since the detector needs numpy and
    its model), misses are detected and cached; otherwise they stay None.
    Without ``use_cache`` the cache is neither read nor written.
    """
    keys = [detection_key(text, candidates) for text in texts]
    hits = get_cache().get_many(keys) if use_cache else {}
    results: list[dict[str, Any] | None] = []
    for key in keys:
        hit = hits.get(key)
        if hit is None:
            results.append(None)
        else:
            value = hit.value
            results.append(
                {"language": value["language"], "confidence": value["confidence"]}
            )
    missing = [index for index, result in enumerate(results) if result is None]
    if not run_detector or not missing:
        return results

    from core.detection import detect

    detected = detect([texts[index] for index in missing], list(candidates))
    new_entries = {}
    for index, detection in zip(missing, detected, strict=True):
        value = {"language": detection.language, "confidence": detection.confidence}
        results[index] = value
        new_entries[keys[index]] = value
    if use_cache:
        get_cache().set_many(new_entries)
    return results


def _fields(detection: dict[str, Any]) -> dict[str, Any]:
    return {
        "detected_source_lang": detection["language"],
        "detection_confidence": detection["confidence"],
    }


def _multiply(first: float | None, second: float | None) -> float | None:
    if first is None or second is None:
        return second if first is None else first
    return first * second


def _weighted_score(scores: list[float | None], weights: list[int]) -> float | None:
    """Average the scores that exist, weighted by the length of their source."""
    pairs = [
        (score, max(1, weight))
        for score, weight in zip(scores, weights, strict=True)
        if score is not None
    ]
    if not pairs:
        return None
    total = sum(weight for _, weight in pairs)
    return sum(score * weight for score, weight in pairs) / total


def _chain_item(head: Item, last: Item, route: list[CheckpointRef]) -> Item:
    item = dict(last)
    item["models"] = [ref.name for ref in route]
    item["model"] = route[-1].name
    item["pivot"] = PIVOT
    item["score"] = _multiply(head.get("score"), last.get("score"))
    item["cached"] = bool(head.get("cached")) and bool(last.get("cached"))
    unrestored = list(head.get("unrestored", [])) + list(last.get("unrestored", []))
    if unrestored:
        item["unrestored"] = unrestored
    item.pop("cache_tier", None)
    if item["cached"]:
        item["cache_tier"] = last.get("cache_tier")
    return item

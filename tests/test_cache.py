"""Tests of the three-tier translation cache."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import stat
import unicodedata
from pathlib import Path

import pytest
import redis

from core.cache import (
    DiskTier,
    JSONOnlyDisk,
    KeyContext,
    MemoryTier,
    TranslationCache,
    cache_key,
)
from core.config import Settings
from tests.helpers import RedisServer, free_port

KEY_ARGS = {
    "model_fingerprint": "abc123",
    "engine": "transformers",
    "precision": "auto",
    "generation": {"num_beams": 4},
    "source_lang": "en",
    "target_lang": "es",
    "options": {},
    "text": "Hello",
}


def make_settings(tmp_path: Path, redis_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "redis_url": redis_url,
        "cache_dir": tmp_path / "cache",
        "cache_memory_entries": 100,
        "cache_disk_bytes": 10_000_000,
        "redis_timeout": 0.3,
        "redis_retry_interval": 0.5,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.mark.unit
class TestCacheKey:
    def test_same_inputs_same_key(self) -> None:
        assert cache_key(**KEY_ARGS) == cache_key(**KEY_ARGS)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("model_fingerprint", "other"),
            ("engine", "ctranslate2"),
            ("precision", "fp16"),
            ("generation", {"num_beams": 1}),
            ("source_lang", "de"),
            ("target_lang", "fr"),
            ("options", {"format": "html"}),
            ("text", "Hello!"),
        ],
    )
    def test_every_input_changes_key(self, field: str, value: object) -> None:
        changed = {**KEY_ARGS, field: value}
        assert cache_key(**changed) != cache_key(**KEY_ARGS)

    def test_text_is_nfc_normalised(self) -> None:
        composed = unicodedata.normalize("NFC", "café")
        decomposed = unicodedata.normalize("NFD", "café")
        assert composed != decomposed
        first = cache_key(**{**KEY_ARGS, "text": composed})
        second = cache_key(**{**KEY_ARGS, "text": decomposed})
        assert first == second

    def test_option_order_does_not_matter(self) -> None:
        first = cache_key(**{**KEY_ARGS, "options": {"a": 1, "b": 2}})
        second = cache_key(**{**KEY_ARGS, "options": {"b": 2, "a": 1}})
        assert first == second

    def test_key_context_matches_function(self) -> None:
        settings = Settings(num_beams=3)
        context = KeyContext.build("en", "es", "fp", settings)
        generation = dict(context.generation)
        expected = cache_key(
            model_fingerprint="fp",
            engine=settings.engine,
            precision=settings.precision,
            generation=generation,
            source_lang="en",
            target_lang="es",
            options={},
            text="Hi",
        )
        assert context.key("Hi", {}) == expected
        assert generation["num_beams"] == 3


@pytest.mark.unit
class TestMemoryTier:
    def test_bounded_by_entries_lru(self) -> None:
        tier = MemoryTier(max_entries=2)
        tier.set("a", {"v": 1})
        tier.set("b", {"v": 2})
        assert tier.get("a") == {"v": 1}
        tier.set("c", {"v": 3})
        assert tier.get("b") is None
        assert tier.get("a") == {"v": 1}
        assert len(tier) == 2

    def test_zero_entries_stores_nothing(self) -> None:
        tier = MemoryTier(max_entries=0)
        tier.set("a", {"v": 1})
        assert tier.get("a") is None


@pytest.mark.unit
class TestDiskTier:
    def test_round_trip_json(self, tmp_path: Path) -> None:
        tier = DiskTier(tmp_path / "disk", 10_000_000, retry_interval=0.1)
        tier.set_many({"k": {"translation": "hola", "g": 0}})
        assert tier.get("k") == {"translation": "hola", "g": 0}
        tier.close()

    def test_directory_mode_700(self, tmp_path: Path) -> None:
        tier = DiskTier(tmp_path / "disk", 10_000_000, retry_interval=0.1)
        tier.set_many({"k": {"translation": "x"}})
        mode = stat.S_IMODE(os.stat(tmp_path / "disk").st_mode)
        assert mode == 0o700
        tier.close()

    def test_bounded_in_bytes(self, tmp_path: Path) -> None:
        tier = DiskTier(tmp_path / "disk", 200_000, retry_interval=0.1)
        for index in range(200):
            tier.set_many({f"k{index}": {"translation": "x" * 5_000}})
        entries, size = tier.counts()
        assert entries < 200
        assert size <= 200_000 * 1.5
        tier.close()

    def test_planted_pickle_value_never_unpickled(self, tmp_path: Path) -> None:
        tier = DiskTier(tmp_path / "disk", 10_000_000, retry_interval=0.1)
        tier.set_many({"k": {"translation": "ok"}})
        tier.close()

        marker = tmp_path / "pwned"

        class Exploit:
            def __reduce__(self) -> tuple[object, tuple[str]]:
                return (os.system, (f"touch {marker}",))

        database = sqlite3.connect(tmp_path / "disk" / "cache.db")
        database.execute(
            "UPDATE Cache SET mode = 4, value = ? WHERE key = ?",
            (pickle.dumps(Exploit()), "k"),
        )
        database.commit()
        database.close()

        reopened = DiskTier(tmp_path / "disk", 10_000_000, retry_interval=0.1)
        assert reopened.get("k") is None
        assert not marker.exists()
        reopened.close()

    def test_json_only_disk_rejects_objects(self, tmp_path: Path) -> None:
        disk = JSONOnlyDisk(str(tmp_path))
        with pytest.raises(TypeError):
            disk.store({"a": 1}, read=False)
        with pytest.raises(TypeError):
            disk.put(("tuple", "key"))
        with pytest.raises(ValueError, match="unpickle"):
            disk.get(b"\x80\x04", raw=False)

    def test_unwritable_directory_degrades(self, tmp_path: Path) -> None:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        tier = DiskTier(blocker / "disk", 10_000_000, retry_interval=0.1)
        tier.set_many({"k": {"translation": "x"}})
        assert tier.get("k") is None
        assert not tier.ok
        assert "failed" in (tier.last_error or "")


@pytest.mark.unit
class TestRedisDown:
    def test_cache_works_without_redis(self, tmp_path: Path) -> None:
        url = f"redis://127.0.0.1:{free_port()}/0"
        cache = TranslationCache(make_settings(tmp_path, url))
        cache.set_many({"k": {"translation": "hola"}})
        hits = cache.get_many(["k", "missing"])
        assert set(hits) == {"k"}
        assert hits["k"].tier == "memory"
        assert hits["k"].value["translation"] == "hola"
        stats = cache.stats()
        assert stats["redis_connected"] is False
        assert stats["tiers"]["memory"]["entries"] == 1
        cache.disk.close()

    def test_disk_survives_new_process_object(self, tmp_path: Path) -> None:
        url = f"redis://127.0.0.1:{free_port()}/0"
        first = TranslationCache(make_settings(tmp_path, url))
        first.set_many({"k": {"translation": "hola"}})
        first.disk.close()
        second = TranslationCache(make_settings(tmp_path, url))
        hits = second.get_many(["k"])
        assert hits["k"].tier == "disk"
        second.disk.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis with no cache keys; other keys belong to the worker."""
    client = redis.Redis.from_url(redis_server.url)
    names = list(client.scan_iter(match="trans:*"))
    if names:
        client.delete(*names)
    return redis_server.url


@pytest.mark.integration
class TestWithRedis:
    def test_write_reaches_every_tier(self, tmp_path: Path, redis_url: str) -> None:
        cache = TranslationCache(make_settings(tmp_path, redis_url))
        cache.set_many({"k": {"translation": "hola"}})
        assert cache.memory.get("k") is not None
        assert cache.disk.get("k") is not None
        client = redis.Redis.from_url(redis_url)
        raw = client.get("trans:e:k")
        assert raw is not None
        assert json.loads(raw)["translation"] == "hola"
        ttl = client.ttl("trans:e:k")
        assert 0 < ttl <= cache.settings.cache_redis_ttl
        cache.disk.close()

    def test_redis_hit_promoted_to_local_tiers(
        self, tmp_path: Path, redis_url: str
    ) -> None:
        writer = TranslationCache(make_settings(tmp_path / "a", redis_url))
        reader = TranslationCache(make_settings(tmp_path / "b", redis_url))
        writer.set_many({"k": {"translation": "hola"}})
        assert reader.get_many(["k"])["k"].tier == "redis"
        assert reader.get_many(["k"])["k"].tier == "memory"
        reader.memory.clear()
        assert reader.get_many(["k"])["k"].tier == "disk"
        writer.disk.close()
        reader.disk.close()

    def test_clear_reaches_other_processes(
        self, tmp_path: Path, redis_url: str
    ) -> None:
        first = TranslationCache(make_settings(tmp_path / "a", redis_url))
        second = TranslationCache(make_settings(tmp_path / "b", redis_url))
        first.set_many({"k": {"translation": "hola"}})
        assert second.get_many(["k"])["k"].tier == "redis"
        assert "k" in second.get_many(["k"])

        first.clear()

        assert second.get_many(["k"]) == {}
        assert len(second.memory) == 0
        assert second.disk.counts()[0] == 0
        first.disk.close()
        second.disk.close()

    def test_stale_generation_value_ignored(
        self, tmp_path: Path, redis_url: str
    ) -> None:
        cache = TranslationCache(make_settings(tmp_path, redis_url))
        client = redis.Redis.from_url(redis_url)
        client.set("trans:generation", 5)
        client.set("trans:e:k", json.dumps({"translation": "old", "g": 4}))
        assert cache.get_many(["k"]) == {}
        cache.disk.close()

    def test_stats_count_hits_and_misses(self, tmp_path: Path, redis_url: str) -> None:
        cache = TranslationCache(make_settings(tmp_path, redis_url))
        cache.set_many({"a": {"translation": "x"}})
        cache.get_many(["a", "b"])
        stats = cache.stats()
        assert stats["lookups"] == 2
        assert stats["hits"] == 1
        assert stats["misses"] == 1
        assert stats["hit_rate"] == 0.5
        assert stats["tiers"]["memory"]["hits"] == 1
        assert stats["tiers"]["redis"]["misses"] == 1
        assert stats["tiers"]["redis"]["entries"] == 1
        assert stats["redis_connected"] is True
        cache.disk.close()

    def test_full_cache_keeps_queued_tasks(self, tmp_path: Path) -> None:
        """volatile-lru evicts TTL'd cache entries, never a queued message."""
        with RedisServer(maxmemory="3mb") as server:
            client = redis.Redis.from_url(server.url)
            client.config_set("maxmemory-policy", "volatile-lru")
            client.lpush("bulk", json.dumps({"task": "queued"}))
            cache = TranslationCache(make_settings(tmp_path, server.url))
            for start in range(0, 3_000, 100):
                cache.set_many(
                    {
                        f"k{index}": {"translation": "x" * 2_000}
                        for index in range(start, start + 100)
                    }
                )
            assert client.llen("bulk") == 1
            assert cache.redis.count_entries()[0] < 3_000
            cache.disk.close()


@pytest.mark.integration
def test_clear_seen_through_shared_disk_during_outage(
    tmp_path: Path, redis_url: str
) -> None:
    """A process that missed a clear learns it from the shared disk tier."""
    from core.cache import RedisTier

    first = TranslationCache(make_settings(tmp_path, redis_url))
    second = TranslationCache(make_settings(tmp_path, redis_url))
    assert first.get_many(["warm"]) == {}
    assert second.get_many(["warm"]) == {}

    first.clear()
    first.set_many({"k": {"translation": "hola"}})
    second.redis = RedisTier(
        f"redis://127.0.0.1:{free_port()}/0", "trans:", 60, 0.2, 0.5
    )
    hits = second.get_many(["k"])
    assert set(hits) == {"k"}
    assert hits["k"].tier == "disk"
    first.disk.close()
    second.disk.close()

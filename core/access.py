"""API keys: which requests may use the API, checked without Redis.

Keys come from ``API_KEYS`` and ``API_KEYS_FILE`` (read by ``core.config``).
Only SHA-256 digests of the keys are kept, and a supplied key is compared with
every digest by ``hmac.compare_digest``, so the time taken does not depend on
how much of a key matched or on which key matched. Logs and rate-limit
counters name a key by its id, the first 12 hex digits of its digest, never by
the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from core.config import ApiKey, Settings, get_settings

KEY_ID_LENGTH = 12
# The Flask extension name under which the API keeps its KeyRing.
KEYRING_EXTENSION = "mt_keyring"


@dataclass(frozen=True)
class KeyRecord:
    """A configured key, kept as its digest, with its limits."""

    digest: bytes
    key_id: str
    request_limit: str
    character_limit: str


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyRing:
    """The configured API keys of this process."""

    def __init__(
        self, keys: tuple[ApiKey, ...], request_limit: str, character_limit: str
    ) -> None:
        self.records = tuple(
            KeyRecord(
                digest=_digest(key.key),
                key_id=_digest(key.key).hex()[:KEY_ID_LENGTH],
                request_limit=key.request_limit or request_limit,
                character_limit=key.character_limit or character_limit,
            )
            for key in keys
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> KeyRing:
        settings = settings or get_settings()
        return cls(
            settings.api_keys,
            settings.api_rate_limit,
            settings.api_character_limit,
        )

    @property
    def enabled(self) -> bool:
        """True when keys are configured, so every request needs one."""
        return bool(self.records)

    def find(self, supplied: str | None) -> KeyRecord | None:
        """Return the record of a valid key, or None; constant time per key."""
        if not supplied or not self.records:
            return None
        digest = _digest(supplied)
        found = None
        # Every record is compared, also after a match, so the timing does
        # not reveal the position of the matching key.
        for record in self.records:
            if hmac.compare_digest(record.digest, digest):
                found = record
        return found

"""Click-to-WhatsApp ad referrals: one shape for both WhatsApp channels.

The Cloud API sends a `referral` object on the first message after an ad click
(`source_url`, `source_id`, `source_type`, `headline`, `body`, `media_type`,
`image_url`/`video_url`, `thumbnail_url`, `ctwa_clid`, `welcome_message.text`).
Twilio flattens the same facts into `Referral*` form fields, and sends
`ReferralNumMedia=0` on *every* WhatsApp message, so a referral exists only when a
field that names the ad is present.

The shape the agent and the feeds see (keys present only when the provider sent
them): `sourceUrl, sourceId, sourceType, headline, body, mediaType, mediaUrl,
mediaId, mediaContentType, thumbnailUrl, ctwaClid, welcomeMessage`, plus `other`
for any field this table does not name (nothing the provider sent is dropped).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_CLOUD = {
    "source_url": "sourceUrl",
    "source_id": "sourceId",
    "source_type": "sourceType",
    "headline": "headline",
    "body": "body",
    "media_type": "mediaType",
    "thumbnail_url": "thumbnailUrl",
    "ctwa_clid": "ctwaClid",
}

_TWILIO = {
    "ReferralSourceUrl": "sourceUrl",
    "ReferralSourceId": "sourceId",
    "ReferralSourceType": "sourceType",
    "ReferralHeadline": "headline",
    "ReferralBody": "body",
    "ReferralMediaUrl": "mediaUrl",
    "ReferralMediaId": "mediaId",
    "ReferralMediaContentType": "mediaContentType",
    "ReferralCtwaClid": "ctwaClid",
    "ReferralWelcomeMessage": "welcomeMessage",
    "ReferralThumbnailUrl": "thumbnailUrl",
}

# Fields that only describe another field: alone they are not a referral.
_COUNTS = frozenset({"ReferralNumMedia"})


def from_cloud(raw: Any) -> dict[str, Any] | None:
    """The Cloud API's `messages[].referral`, or None when it says nothing."""
    if not isinstance(raw, Mapping):
        return None
    out: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for key, value in raw.items():
        if value in (None, "", {}, []):
            continue
        if key in _CLOUD:
            out[_CLOUD[key]] = value
        elif key in ("image_url", "video_url"):
            out["mediaUrl"] = value
            out.setdefault("mediaType", key.removesuffix("_url"))
        elif key == "welcome_message" and isinstance(value, Mapping):
            if value.get("text"):
                out["welcomeMessage"] = value["text"]
        else:
            other[str(key)] = value
    if other:
        out["other"] = other
    return out or None


def from_twilio(form: Mapping[str, str]) -> dict[str, Any] | None:
    """Twilio's `Referral*` fields, or None when only `ReferralNumMedia` (or nothing) came."""
    out: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for key, value in form.items():
        if not key.startswith("Referral") or not value or key in _COUNTS:
            continue
        if key in _TWILIO:
            out[_TWILIO[key]] = value
        else:
            other[key[len("Referral") :] or key] = value
    if not out and not other:
        return None
    content_type = out.get("mediaContentType")
    if isinstance(content_type, str) and "/" in content_type:
        out["mediaType"] = content_type.split("/", 1)[0]
    if other:
        out["other"] = other
    return out

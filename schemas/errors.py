"""Reason codes carried by dead-letter records, and the one error type decoders raise."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    MALFORMED = "malformed"                  # not msgpack, truncated, not a map
    UNSUPPORTED_VERSION = "unsupported_version"
    INVALID_FIELD = "invalid_field"          # missing, mistyped or out-of-range field
    OVERSIZE = "oversize"                    # message or image bytes over the limit
    IMAGE_TOO_LARGE = "image_too_large"      # declared dimensions over the limit (bomb guard)
    UNDECODABLE_IMAGE = "undecodable_image"  # corrupt JPEG/PNG, raw bytes not matching shape
    UNKNOWN_PRODUCT = "unknown_product"      # no model for the frame's product/line
    UNKNOWN_LINE = "unknown_line"
    SCORING_FAILED = "scoring_failed"        # the engine raised on this frame
    WRITE_REJECTED = "write_rejected"        # a store refused the record for good (type, constraint, key)


class SchemaError(ValueError):
    """A message that cannot be accepted; ``reason`` is one of :class:`Reason`."""

    def __init__(self, reason: Reason | str, message: str) -> None:
        super().__init__(message)
        self.reason = str(reason)

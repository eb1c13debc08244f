"""The wire contracts: Frame, Verdict, PartVerdict, Heatmap, Label and DeadLetter, msgpack-encoded and versioned.

Every message is a msgpack map with string keys and a ``schema_version``.
Decoding is strict: an unknown version, a missing field or a field of the
wrong type raises :class:`SchemaError` with a reason code that the
dead-letter record carries. Unknown extra keys are ignored so that a newer
producer can add fields without breaking older consumers.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import msgpack

from .errors import Reason, SchemaError

ImageEncoding = Literal["jpeg", "png", "raw"]
RAW_DTYPES = ("uint8", "uint16", "float32")
_META_TYPES = (str, int, float, bool)
MAX_META_ITEMS = 64
# A frame's meta travels into its verdict (a serial number for the MES), bounded: a verdict stays small
# whatever a producer attaches.
VERDICT_META_ITEMS = 16
VERDICT_META_CHARS = 256


def new_frame_id() -> str:
    return uuid.uuid4().hex


# Field specs: name -> (accepted python types, required), derived from each
# message's dataclass annotations (see _spec_of). bool is a subclass of int in
# Python, so integer fields reject it explicitly.
_Spec = dict[str, tuple[tuple[type, ...], bool]]
# What msgpack may hand back for an annotated type: an int where a float is declared, a list for a tuple.
_WIRE_TYPES: dict[type, tuple[type, ...]] = {float: (float, int), list: (list, tuple)}


def _spec_of(cls: type) -> _Spec:
    """The decode spec of a message dataclass: ``X | None`` fields are optional, the rest required."""
    hints = typing.get_type_hints(cls)
    spec: _Spec = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        (base,) = [a for a in args if a is not type(None)]
        origin = typing.get_origin(base) or base
        spec[f.name] = (_WIRE_TYPES.get(origin, (origin,)), type(None) not in args)
    return spec


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _check(kind: str, doc: Any, spec: _Spec, version: int) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise SchemaError(Reason.MALFORMED, f"{kind}: expected a msgpack map, got {type(doc).__name__}")
    got_version = doc.get("schema_version")
    if got_version != version:
        raise SchemaError(
            Reason.UNSUPPORTED_VERSION,
            f"{kind}: unsupported schema_version {got_version!r} (this build reads {version})",
        )
    out: dict[str, Any] = {}
    for name, (types, required) in spec.items():
        if name not in doc or doc[name] is None:
            if required:
                raise SchemaError(Reason.INVALID_FIELD, f"{kind}: missing field {name!r}")
            out[name] = None
            continue
        value = doc[name]
        if bool not in types and isinstance(value, bool) or not isinstance(value, types):
            raise SchemaError(
                Reason.INVALID_FIELD,
                f"{kind}: field {name!r} must be {'/'.join(t.__name__ for t in types)}, "
                f"got {type(value).__name__}",
            )
        if (isinstance(value, int) and not isinstance(value, bool) and float not in types
                and not _INT64_MIN <= value <= _INT64_MAX):
            # msgpack carries up to unsigned 64 bits; every store (ClickHouse Int64) and consumer
            # expects signed 64: out of range is refused here instead of poisoning a sink later.
            raise SchemaError(Reason.INVALID_FIELD, f"{kind}: field {name!r} is outside the signed 64-bit range")
        out[name] = value
    return out


def _unpack(kind: str, data: bytes, max_bytes: int | None = None) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SchemaError(Reason.MALFORMED, f"{kind}: expected bytes, got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise SchemaError(Reason.OVERSIZE, f"{kind}: message of {len(data)} bytes exceeds {max_bytes}")
    try:
        # Bounded unpacking: no container or blob can claim more than the message holds.
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=len(data),
            max_str_len=len(data),
            max_array_len=len(data),
            max_map_len=len(data),
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise SchemaError(Reason.MALFORMED, f"{kind}: not valid msgpack ({type(exc).__name__}: {exc})") from None


class _Message:
    KIND: ClassVar[str]
    VERSION: ClassVar[int] = 1
    SPEC: ClassVar[_Spec]  # set below each class from its annotations

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def encode(self) -> bytes:
        return msgpack.packb(self.to_dict(), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes, max_bytes: int | None = None):  # noqa: ANN206
        fields = _check(cls.KIND, _unpack(cls.KIND, data, max_bytes), cls.SPEC, cls.VERSION)
        obj = cls(**fields)  # type: ignore[call-arg]
        obj._validate()
        return obj

    def _validate(self) -> None:
        """Semantic checks beyond types; subclasses extend."""


@dataclass
class Frame(_Message):
    """One camera image. Key on the wire: ``camera_id`` (keeps a camera's frames in order)."""

    KIND: ClassVar[str] = "Frame"
    frame_id: str
    line_id: str
    camera_id: str
    product: str
    captured_at_ns: int
    seq: int
    encoding: str
    image: bytes
    dtype: str | None = None
    shape: list[int] | None = None
    meta: dict[str, Any] | None = field(default_factory=dict)
    # The part this frame shows (several cameras or frames per part); None: the frame is the part.
    part_id: str | None = None
    schema_version: int = 1

    def _validate(self) -> None:
        if self.part_id is not None and not 1 <= len(self.part_id) <= 128:
            raise SchemaError(Reason.INVALID_FIELD, "Frame: part_id must be 1..128 characters")
        for name in ("frame_id", "line_id", "camera_id", "product"):
            value = getattr(self, name)
            if not value or len(value) > 128:
                raise SchemaError(Reason.INVALID_FIELD, f"Frame: {name} must be 1..128 characters")
        if self.encoding not in ("jpeg", "png", "raw"):
            raise SchemaError(Reason.INVALID_FIELD, f"Frame: unknown image encoding {self.encoding!r}")
        if self.encoding == "raw":
            if self.dtype not in RAW_DTYPES:
                raise SchemaError(Reason.INVALID_FIELD, f"Frame: raw dtype must be one of {RAW_DTYPES}, got {self.dtype!r}")
            if (
                not isinstance(self.shape, (list, tuple))
                or len(self.shape) not in (2, 3)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in self.shape)
                or (len(self.shape) == 3 and self.shape[2] not in (1, 3))
            ):
                raise SchemaError(Reason.INVALID_FIELD, f"Frame: raw shape must be [h, w] or [h, w, 1|3], got {self.shape!r}")
            self.shape = [int(d) for d in self.shape]
        meta = self.meta or {}
        if len(meta) > MAX_META_ITEMS or not all(
            isinstance(k, str) and isinstance(v, _META_TYPES) for k, v in meta.items()
        ):
            raise SchemaError(Reason.INVALID_FIELD, "Frame: meta must map at most 64 strings to str/int/float/bool")
        self.meta = meta


@dataclass
class Verdict(_Message):
    """The processor's judgement of one frame: what MES systems consume."""

    KIND: ClassVar[str] = "Verdict"
    frame_id: str
    line_id: str
    camera_id: str
    product: str
    seq: int
    captured_at_ns: int
    scored_at_ns: int
    model_name: str
    model_version: str
    score: float
    threshold: float
    is_defective: bool
    heatmap_key: str | None
    queue_wait_ms: float
    inference_ms: float
    processor_id: str
    # Added compatibly in v1 (optional; older consumers ignore them, older verdicts decode with None):
    part_id: str | None = None
    meta: dict[str, Any] | None = None  # the frame's meta, bounded by verdict_meta()
    late: bool | None = None  # scored after the line's verdict deadline: stored, never sent to a reject gate
    schema_version: int = 1


def verdict_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    """The part of a frame's meta a verdict carries: the first 16 items, strings cut to 256 characters."""
    out: dict[str, Any] = {}
    for key, value in list((meta or {}).items())[:VERDICT_META_ITEMS]:
        out[key[:VERDICT_META_CHARS]] = value[:VERDICT_META_CHARS] if isinstance(value, str) else value
    return out


@dataclass
class PartVerdict(_Message):
    """One decision per part, fused from the verdicts of its views (cameras). Key: ``part_id``.

    ``is_defective`` is true when any view is defective, or when a view is missing at the deadline and
    the line's ``missing_view_decision`` is ``reject`` (a part nobody saw whole is not passed by default).
    """

    KIND: ClassVar[str] = "PartVerdict"
    part_id: str
    line_id: str
    product: str
    decided_at_ns: int
    first_captured_at_ns: int
    # A reject gate must act before this: first capture + the line's verdict deadline; None: the line has none.
    deadline_at_ns: int | None
    reason: str  # "complete": every expected view arrived; "deadline": decided at the deadline
    views: list[dict[str, Any]]  # one per view: camera_id, frame_id, score, threshold, is_defective, late
    expected_views: list[str]
    missing_views: list[str]
    worst_score_ratio: float  # max over views of score / threshold (> 1: a defective view)
    worst_camera_id: str | None
    is_defective: bool
    late: bool  # decided after deadline_at_ns, or a view was late: a reject gate must not act on it
    meta: dict[str, Any] | None = None  # the views' meta, merged (first view wins), bounded as a verdict's
    schema_version: int = 1

    def _validate(self) -> None:
        if not 1 <= len(self.part_id) <= 128:
            raise SchemaError(Reason.INVALID_FIELD, "PartVerdict: part_id must be 1..128 characters")
        if self.reason not in ("complete", "deadline"):
            raise SchemaError(Reason.INVALID_FIELD, f"PartVerdict: unknown reason {self.reason!r}")
        for view in self.views:
            if not isinstance(view, dict) or not isinstance(view.get("camera_id"), str):
                raise SchemaError(Reason.INVALID_FIELD, "PartVerdict: every view is a map with a camera_id")


@dataclass
class Heatmap(_Message):
    """An encoded heatmap overlay, published for the heatmap sink to store under ``key``."""

    KIND: ClassVar[str] = "Heatmap"
    frame_id: str
    line_id: str
    key: str
    content_type: str
    data: bytes
    captured_at_ns: int
    schema_version: int = 1


# What an operator can say about a verdict: a defective one was right (confirmed_defect) or wrong
# (false_alarm); a passed one was wrong (missed_defect, marked on the sampled passed parts).
LABELS = ("confirmed_defect", "false_alarm", "missed_defect")
LABEL_NOTE_CHARS = 500
LABEL_OPERATOR_CHARS = 128


@dataclass
class Label(_Message):
    """An operator's judgement of one verdict. Key on the wire: ``frame_id`` (a frame's labels stay in
    order, so the latest one -- an operator changing their mind -- is the one that counts)."""

    KIND: ClassVar[str] = "Label"
    frame_id: str
    line_id: str
    camera_id: str
    product: str
    model_version: str  # the version whose verdict the operator saw
    label: str  # one of LABELS
    labelled_at_ns: int
    operator: str  # who: the X-Operator name given to the API, else the API key's id
    note: str | None = None  # free text, at most LABEL_NOTE_CHARS
    schema_version: int = 1

    def _validate(self) -> None:
        for name in ("frame_id", "line_id", "camera_id", "product", "model_version"):
            value = getattr(self, name)
            if not value or len(value) > 128:
                raise SchemaError(Reason.INVALID_FIELD, f"Label: {name} must be 1..128 characters")
        if self.label not in LABELS:
            raise SchemaError(Reason.INVALID_FIELD, f"Label: label must be one of {LABELS}, got {self.label!r}")
        if not 1 <= len(self.operator) <= LABEL_OPERATOR_CHARS:
            raise SchemaError(Reason.INVALID_FIELD, f"Label: operator must be 1..{LABEL_OPERATOR_CHARS} characters")
        if self.note is not None and len(self.note) > LABEL_NOTE_CHARS:
            raise SchemaError(Reason.INVALID_FIELD, f"Label: note must be at most {LABEL_NOTE_CHARS} characters")
        if self.labelled_at_ns <= 0:
            raise SchemaError(Reason.INVALID_FIELD, "Label: labelled_at_ns must be positive")


@dataclass
class DeadLetter(_Message):
    """A message that could not be processed, with where it came from and why."""

    KIND: ClassVar[str] = "DeadLetter"
    source_topic: str
    partition: int
    offset: int
    reason: str
    error: str
    raw: bytes
    raw_size: int
    failed_at_ns: int
    component: str
    frame_id: str | None = None
    line_id: str | None = None
    schema_version: int = 1

    @classmethod
    def build(
        cls,
        *,
        source_topic: str,
        partition: int,
        offset: int,
        reason: str,
        error: str,
        raw: bytes,
        max_raw_bytes: int,
        failed_at_ns: int,
        component: str,
        frame_id: str | None = None,
        line_id: str | None = None,
    ) -> "DeadLetter":
        raw = bytes(raw or b"")
        return cls(
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            reason=str(reason),
            error=error[:4000],
            raw=raw[:max_raw_bytes],
            raw_size=len(raw),
            failed_at_ns=failed_at_ns,
            component=component,
            frame_id=frame_id,
            line_id=line_id,
        )


for _message in (Frame, Verdict, PartVerdict, Heatmap, Label, DeadLetter):
    _message.SPEC = _spec_of(_message)

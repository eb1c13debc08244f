"""JSON Schema of the wire messages, for MES consumers that are not written in Python.

Generated from the same field specs the decoders enforce; the committed
``verdict.schema.json`` is checked against this generator by the tests.
Regenerate with ``python -m lineguard.schemas.jsonschema``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .messages import LABELS, Label, PartVerdict, Verdict, _Message

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", bytes: "string",
               list: "array", tuple: "array", dict: "object"}
_DESCRIPTIONS = {
    "frame_id": "Globally unique frame id (hex UUID4); the idempotence key: at-least-once delivery may repeat a verdict.",
    "line_id": "Production line; also the suffix of the topic lineguard.verdicts.<line_id>.",
    "camera_id": "Camera; the Kafka message key, so one camera's verdicts stay in order.",
    "seq": "Per-camera sequence number assigned by the producer.",
    "captured_at_ns": "Capture time, UTC nanoseconds since the Unix epoch.",
    "scored_at_ns": "Scoring time, UTC nanoseconds since the Unix epoch.",
    "score": "Raw anomaly score of the model (higher = more anomalous).",
    "threshold": "Threshold in force for this line and product (manifest value or per-line override).",
    "is_defective": "score > threshold.",
    "heatmap_key": "Object key of the heatmap overlay in the heatmap bucket, or null.",
    "queue_wait_ms": "Time the frame waited in the processor before its batch started.",
    "inference_ms": "Engine time of the frame's batch.",
    "part_id": "The part the frame shows (several cameras or frames per part), from the producer; null if none.",
    "meta": "The frame's meta (e.g. a part serial number), at most 16 items, strings cut to 256 characters.",
    "late": "Scored after the line's verdict deadline (plant.lines.<line>.verdict_deadline_ms): stored, never sent to a reject gate. Null when the line has no deadline.",
    "decided_at_ns": "When the part was decided, UTC nanoseconds since the Unix epoch.",
    "first_captured_at_ns": "Capture time of the part's first view.",
    "deadline_at_ns": "first_captured_at_ns + the line's verdict deadline: a reject gate acts only before it; null when the line has no deadline.",
    "reason": "complete: every expected view arrived; deadline: decided at the deadline with what had arrived.",
    "views": "One map per view: camera_id, frame_id, score, threshold, is_defective, late.",
    "expected_views": "The camera ids the line expects per part (plant.lines.<line>.part_views).",
    "missing_views": "Expected views that had not arrived at the deadline.",
    "worst_score_ratio": "Max over the views of score / threshold: above 1, a view is defective.",
    "worst_camera_id": "The view with the worst score ratio.",
}
# Where a field means something else in one message than in the verdict.
_KIND_DESCRIPTIONS = {
    "Label": {
        "frame_id": "The labelled verdict's frame id; the Kafka message key, so a frame's labels stay in order and the latest counts.",
        "line_id": "The verdict's line; also the suffix of the topic lineguard.labels.<line_id>.",
        "camera_id": "The verdict's camera.",
        "model_version": "The model version of the verdict the operator judged.",
        "label": f"One of {', '.join(LABELS)}: confirmed_defect and false_alarm judge a defective verdict, missed_defect a passed one.",
        "labelled_at_ns": "When the operator labelled it, UTC nanoseconds since the Unix epoch; the latest label of a frame wins.",
        "operator": "Who labelled it: the name the API client gave (X-Operator header), else the id of its API key (key-<8 hex>).",
        "note": "Free text from the operator, at most 500 characters.",
    },
}


def schema_for(cls: type[_Message]) -> dict:
    properties = {}
    for name, (types, _required) in cls.SPEC.items():
        kinds = sorted({_JSON_TYPES[t] for t in types})
        prop: dict = {"type": kinds[0] if len(kinds) == 1 else kinds}
        if name == "schema_version":
            prop = {"const": cls.VERSION}
        description = _KIND_DESCRIPTIONS.get(cls.KIND, {}).get(name) or _DESCRIPTIONS.get(name)
        if description:
            prop["description"] = description
        if cls is Label and name == "label":
            prop["enum"] = list(LABELS)
        if not _required:
            prop = {"anyOf": [prop, {"type": "null"}], **({"description": prop.pop("description")} if "description" in prop else {})}
        properties[name] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://lineguard.dev/schemas/{cls.KIND.lower()}-v{cls.VERSION}.json",
        "title": f"lineguard {cls.KIND} v{cls.VERSION}",
        "description": f"msgpack map on the wire; this schema describes it after msgpack decoding. {cls.__doc__ or ''}".strip(),
        "type": "object",
        "required": [n for n, (_, req) in cls.SPEC.items() if req],
        "properties": properties,
        "additionalProperties": True,  # forward compatibility: newer producers may add fields
    }


VERDICT_SCHEMA_FILE = Path(__file__).with_name("verdict.schema.json")
PART_VERDICT_SCHEMA_FILE = Path(__file__).with_name("part_verdict.schema.json")
LABEL_SCHEMA_FILE = Path(__file__).with_name("label.schema.json")
SCHEMA_FILES = {VERDICT_SCHEMA_FILE: Verdict, PART_VERDICT_SCHEMA_FILE: PartVerdict, LABEL_SCHEMA_FILE: Label}


def write() -> list[Path]:
    for path, cls in SCHEMA_FILES.items():
        path.write_text(json.dumps(schema_for(cls), indent=2) + "\n")
    return list(SCHEMA_FILES)


if __name__ == "__main__":
    for written in write():
        print(written)

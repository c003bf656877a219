"""The event record: one typed definition from which the daemon's JSON Lines, MQTT events, the batch
analyser's tables and the published JSON Schema (``docs/events.schema.json``) all come.

    python -m edge_runtime.events            # print the JSON Schema

Times: ``ts`` is wall-clock (when the frame was processed); ``media_s`` is the frame's position in
the source (a video file's container timestamp; for a live source, seconds since the capture began),
so a track's ``summary.duration_s`` does not depend on how fast the machine processed it. Shares are
percent everywhere, and their keys say so (``_pct``); probabilities are fractions in [0, 1].
"""
from __future__ import annotations

import json
import sys
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields

from .cli import command
from .labels import LABELS

# 2: media_s, device, schema; summary times in media seconds; shares in percent (shares_pct);
#    an end event's label/score/probs describe the whole track
EVENT_SCHEMA_VERSION = 2
EVENT_TYPES = ("new", "update", "end")
SCHEMA_ID = f"urn:fer-edge:events:{EVENT_SCHEMA_VERSION}"


def doc(text: str, **schema) -> dict:
    """Field metadata: its description and any JSON Schema keywords (minimum, enum, ...)."""
    return {"doc": text, "schema": schema}


@dataclass(frozen=True)
class TrackSummary:
    """Per person, not per frame: carried by ``end`` events."""
    dominant: str | None = field(metadata=doc("the emotion with the most frames of the track (smoothed label); "
                                              "null if none was seen", enum=list(LABELS)))
    dominant_pct: float = field(metadata=doc("the dominant emotion's share of the frames seen, percent",
                                             minimum=0, maximum=100))
    shares_pct: dict[str, float] = field(metadata=doc("each emotion's share of the frames seen, percent",
                                                      labels=True, minimum=0, maximum=100))
    frames_seen: int = field(metadata=doc("frames in which the face was detected", minimum=0))
    frames_spanned: int = field(metadata=doc("frames from the first to the last detection", minimum=1))
    first_media_s: float | None = field(metadata=doc("media time of the first detection, s", minimum=0))
    last_media_s: float | None = field(metadata=doc("media time of the last detection, s", minimum=0))
    duration_s: float | None = field(metadata=doc("last_media_s - first_media_s: how long the person was in view, "
                                                  "in the video's own seconds", minimum=0))
    wall_s: float = field(metadata=doc("wall-clock seconds between processing the first and the last detection",
                                       minimum=0))


@dataclass(frozen=True)
class Event:
    """One face track changing: ``new`` (first seen), ``update`` (seen again), ``end`` (gone)."""
    type: str = field(metadata=doc("new, update or end", enum=list(EVENT_TYPES)))
    device: str = field(metadata=doc("the daemon's device id (MQTT topics <prefix>/<device>/...)"))
    ts: float = field(metadata=doc("wall-clock UNIX time the frame was processed, s"))
    media_s: float | None = field(metadata=doc(
        "the frame's position in the source, s: a file's container timestamp (with --loop each pass continues from "
        "the end of the last); "
        "a live source's seconds since its capture began; null for an image folder", minimum=0))
    frame: int = field(metadata=doc("index of the frame among those read (skipped corrupt frames not counted)",
                                    minimum=-1))
    track: int = field(metadata=doc("track id, unique within one run", minimum=1))
    box: list[int] = field(metadata=doc("face box x, y, w, h, px", items=4))
    crop: list[int] = field(metadata=doc("the region that was classified x, y, w, h, px", items=4))
    det_score: float = field(metadata=doc("detector confidence", minimum=0, maximum=1))
    landmarks: list[list[float]] | None = field(metadata=doc("5 [x, y] points (eyes, nose, mouth corners) or null"))
    label: str = field(metadata=doc("new/update: argmax of probs (smoothed); end: the track's dominant emotion",
                                    enum=list(LABELS)))
    score: float = field(metadata=doc("probs[label]", minimum=0, maximum=1))
    raw_label: str = field(metadata=doc("argmax of raw, the latest frame's own probabilities", enum=list(LABELS)))
    probs: dict[str, float] = field(metadata=doc(
        "new/update: smoothed probabilities (exponential moving average over the track's frames); end: each "
        "emotion's share of the track's frames (as fractions, summing to 1)", labels=True, minimum=0, maximum=1))
    raw: dict[str, float] = field(metadata=doc("the latest frame's probabilities", labels=True, minimum=0, maximum=1))
    first_frame: int = field(metadata=doc("frame index of the track's first detection", minimum=0))
    last_frame: int = field(metadata=doc("frame index of the track's latest detection", minimum=0))
    latency_ms: dict[str, float] = field(metadata=doc("per-stage time of this frame, ms (empty at shutdown)",
                                                      minimum=0))
    summary: TrackSummary | None = field(default=None, metadata=doc("end events only (left out of the others): "
                                                                    "the whole track"))
    schema: int = field(default=EVENT_SCHEMA_VERSION, metadata=doc("the event schema's version",
                                                                   const=EVENT_SCHEMA_VERSION))

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["summary"] is None:
            del d["summary"]
        return d


# ------------------------------------------------------------------------------ the JSON Schema
def _type(tp, meta: dict) -> dict:
    """A JSON Schema for one annotation (the few kinds the records use)."""
    kw = dict(meta.get("schema", {}))
    labels = kw.pop("labels", False)
    items = kw.pop("items", None)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if hasattr(inner[0], "__dataclass_fields__"):  # an optional record is left out, never null
            return record_schema(inner[0])
        s = _type(inner[0], meta)
        if "enum" in s:  # the enum lists null itself
            return {"enum": [*s["enum"], *([None] if None not in s["enum"] else [])]}
        return {"anyOf": [s, {"type": "null"}]}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", **kw}
    if tp is float:
        return {"type": "number", **kw}
    if tp is str:
        return {"type": "string", **kw}
    if origin is list:
        s = {"type": "array", "items": _type(args[0], {})}
        if items:
            s.update(minItems=items, maxItems=items)
        return s
    if origin is dict:
        value = _type(args[1], {"schema": kw})
        if labels:
            return {"type": "object", "properties": {lab: value for lab in LABELS}, "required": list(LABELS),
                    "additionalProperties": False}
        return {"type": "object", "additionalProperties": value}
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return record_schema(tp)
    raise TypeError(f"no JSON Schema for {tp!r}")


def record_schema(cls) -> dict:
    hints = typing.get_type_hints(cls)
    props, required = {}, []
    for f in fields(cls):
        s = _type(hints[f.name], dict(f.metadata))
        if "doc" in f.metadata:
            s = {"description": f.metadata["doc"], **s}
        props[f.name] = s
        if f.default is MISSING and f.default_factory is MISSING:
            required.append(f.name)
    return {"type": "object", "description": (cls.__doc__ or "").strip(), "properties": props,
            "required": required, "additionalProperties": False}


def json_schema() -> dict:
    """The events' JSON Schema (draft 2020-12), generated from ``Event``."""
    s = record_schema(Event)
    s["required"] = [*s["required"], "schema"]
    # end events, and only they, carry the track's summary
    s["if"] = {"properties": {"type": {"const": "end"}}}
    s["then"] = {"required": ["summary"]}
    s["else"] = {"not": {"required": ["summary"]}}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": f"fer-edge event, schema version {EVENT_SCHEMA_VERSION}", **s}


@command("python -m edge_runtime.events")
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m edge_runtime.events\n\nPrint the JSON Schema of the daemon's events "
              f"(version {EVENT_SCHEMA_VERSION}), generated from edge_runtime.events.Event.")
        return 0
    if argv:
        raise ValueError(f"unexpected argument {argv[0]!r}")
    print(json.dumps(json_schema(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Event", "TrackSummary", "EVENT_SCHEMA_VERSION", "EVENT_TYPES", "json_schema"]

"""The canonical label order and the mapping of folder/CSV names onto it."""
from __future__ import annotations

# Alphabetical: the conventional class-index order of the image-folder releases of FER2013.
LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
NUM_CLASSES = len(LABELS)

# Spellings seen in the wild (Kaggle folders, AffectNet-style names) -> canonical label.
_ALIASES = {
    "anger": "angry", "disgusted": "disgust", "fearful": "fear", "scared": "fear",
    "happiness": "happy", "sadness": "sad", "surprised": "surprise", "calm": "neutral",
}

# Class index order of the original fer2013.csv `emotion` column.
CSV_ORDER: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def canonical_label(name: str) -> str | None:
    """Map a class-folder name to its canonical label (case-insensitive), or None if unknown."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in LABELS else None


def remap_indices(source_order: tuple[str, ...] | list[str]) -> list[int]:
    """For a model/dataset with another label order: position i -> canonical index."""
    return [LABELS.index(canonical_label(n) or n) for n in source_order]

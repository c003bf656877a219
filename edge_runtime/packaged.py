"""The models this package ships, and which one runs when none is named: the one place their names live.

``model = "auto"`` (the default of ``EmotionRecognizer(model=)``, ``--model`` and ``[model] name``)
picks by the CPU: the dense ``cbilstm`` where int8 dot products make int8 convolutions cheap (x86
VNNI/AMX, Arm ``asimddp``: a Raspberry Pi 5, a Jetson Orin, recent x86), the light ``cbilstm-lite``
where they do not (a Raspberry Pi 4 or 3, AVX2-only x86), because there a model's multiply-accumulate
count decides its speed (docs/experiments/pi-budget.md).
"""
from __future__ import annotations

from pathlib import Path

from .cpu import cpu_flags, has_int8_dot, int8_dot_flags

MODELS_DIR = Path(__file__).resolve().parent / "models"
AUTO = "auto"
DENSE, LIGHT = "cbilstm", "cbilstm-lite"
PACKAGED_MODELS = {  # name -> the CPUs it is for (shown in --help)
    DENSE: "CPUs with int8 dot products (x86 VNNI, Arm asimddp: a Raspberry Pi 5): the most accurate",
    LIGHT: "CPUs without them (a Raspberry Pi 4 or 3, AVX2-only x86): 6x fewer multiply-accumulates",
}
MODEL_CHOICES = (AUTO, *PACKAGED_MODELS)


def for_cpus_without_int8_dot(name: str) -> bool:
    """Whether ``auto`` runs this model where int8 dot products are missing (export shapes its graph for them)."""
    return name == LIGHT


class PackagedModelError(ValueError):
    pass


def choose_model(model: str = AUTO, cpuinfo: str = "/proc/cpuinfo") -> tuple[str, str]:
    """``model`` ("auto" or a packaged name) -> (packaged name, why), e.g. ("cbilstm-lite", "auto: this
    CPU has no int8 dot products")."""
    if model == AUTO:
        dots = int8_dot_flags(cpuinfo)
        if has_int8_dot(cpuinfo):
            return DENSE, f"auto: this CPU has int8 dot products ({', '.join(dots)})"
        if not cpu_flags(cpuinfo):  # no /proc/cpuinfo (macOS, a sandbox): unknown, so the model that is never slow
            return LIGHT, f"auto: this CPU's features are unknown (nothing read from {cpuinfo})"
        return LIGHT, "auto: this CPU has no int8 dot products"
    if model not in PACKAGED_MODELS:
        raise PackagedModelError(f"model {model!r} is not shipped in this package (choose from "
                                 f"{', '.join(MODEL_CHOICES)}; an exported folder goes to --artifacts, or artifacts= in Python)")
    return model, "named"


def packaged_dir(name: str) -> Path:
    """The folder of a shipped model (manifest.json + its files)."""
    if name not in PACKAGED_MODELS:
        raise PackagedModelError(f"model {name!r} is not shipped in this package (choose from "
                                 f"{', '.join(PACKAGED_MODELS)})")
    return MODELS_DIR / name


__all__ = ["AUTO", "DENSE", "LIGHT", "MODEL_CHOICES", "PACKAGED_MODELS", "PackagedModelError", "choose_model",
           "packaged_dir", "MODELS_DIR"]

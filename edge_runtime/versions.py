"""Which versions of which packages produced a result: one helper for every manifest and report."""
from __future__ import annotations

import platform
from importlib import metadata

# The packages whose versions change a result somewhere in this project (absent ones are skipped).
PACKAGES = ("numpy", "opencv-python-headless", "ai-edge-litert", "tflite-runtime", "onnxruntime", "onnxruntime-gpu",
            "tensorflow", "keras", "tf2onnx", "onnx", "scikit-learn")


def package_versions(packages=PACKAGES) -> dict[str, str]:
    """{"python": ..., package: version for each installed one, "platform": ...}; never imports them."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    out["platform"] = platform.platform()
    return out

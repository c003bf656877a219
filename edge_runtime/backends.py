"""Inference backends behind one small interface: load from a manifest entry, predict(batch) -> probs.

An artifacts manifest (written by ``python -m export``) holds::

    "artifacts": {"tflite-int8": {"file": "model_int8.tflite", "format": "tflite", "precision": "int8",
                                  "sha256": "...", "size": 123, "status": "usable",
                                  "input": {"shape": [1, 48, 48, 1], "dtype": "int8",
                                            "scale": 0.0039, "zero_point": -128},
                                  "output": {"shape": [1, 7], "dtype": "int8", "scale": 0.0039,
                                             "zero_point": -128}, ...}, ...}

Quantization parameters come from the manifest and are checked against the model file's own.
Probabilities are always returned in the canonical label order (``edge_runtime.labels.LABELS``),
remapped when the manifest's ``labels`` list another order (e.g. a peer model).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .labels import LABELS, remap_indices
from .manifest import DEVICE_ORDER, Artifact, Manifest, ManifestError, Status, Tensor, artifact_path, read_manifest, verify_file
from .paths import SOURCE_ROOT, cache_dir

log = logging.getLogger(__name__)

STATUS_USABLE = Status.USABLE
# Accuracy is scored one face per call, as a one-face frame sees it: onnx-int8 quantizes LSTM/MatMul
# activations dynamically, with a scale computed per call over the whole batch, so its outputs
# depend on which faces share a batch. Export and benchmarks both score with this batch size.
SCORING_BATCH = 1
AUTO_ORDER = DEVICE_ORDER  # `auto` tries these in order (manifest.py)


class BackendError(Exception):
    """The requested backend cannot run here (runtime missing, no usable artifact)."""


def tflite_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter, "tflite_runtime"
    except ImportError as e:
        raise BackendError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)") from e


BANNER = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


@contextmanager
def without_litert_banner():
    """LiteRT writes BANNER to file descriptor 2 when it builds an interpreter, and no API turns it
    off; an error that follows would then not be one line. Capture fd 2 meanwhile and pass on every
    other line (another thread's output included)."""
    try:
        fd = sys.stderr.fileno()
        sys.stderr.flush()
        saved = os.dup(fd)
    except (AttributeError, OSError, ValueError):  # stderr replaced (pytest's capture) or closed: leave it
        yield
        return
    try:
        tmp = tempfile.TemporaryFile()
    except OSError:  # no writable temp folder: the banner is a small price
        os.close(saved)
        yield
        return
    with tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            rest = [ln for ln in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if ln.strip() != BANNER]
            if rest:
                os.write(fd, "".join(rest).encode())


def available_runtimes() -> dict[str, bool]:
    out = {}
    try:
        tflite_interpreter_class()
        out["tflite"] = True
    except BackendError:
        out["tflite"] = False
    try:
        import onnxruntime  # noqa: F401
        out["onnx"] = True
    except ImportError:
        out["onnx"] = False
    return out


QUANT_OPS = (b"QuantizeLinear", b"QLinear", b"MatMulInteger", b"ConvInteger")  # ONNX ops of a quantized graph


def check_precision(name: str, claimed: str, quantized: bool) -> None:
    """The manifest's precision must match the model file: fp32 has no integer tensors, the rest do."""
    if (claimed == "fp32") == quantized:
        found = "integer (quantized) tensors" if quantized else "only float tensors"
        raise ManifestError(f"{name}: the manifest says precision {claimed!r} but the model file has {found}")


class Backend:
    """Common part: label remapping and the artifact's identity."""
    format = "?"

    def __init__(self, name: str, entry: Artifact, labels: tuple[str, ...]):
        self.name = name
        self.entry = entry
        self.precision = entry.precision
        self.sha256 = entry.sha256 or ""
        # position i of the model output -> canonical class index
        self._order = np.argsort(remap_indices(labels)) if list(labels) != list(LABELS) else None
        self.runtime = ""
        # a LiteRT interpreter is not thread-safe (its tensors are shared state): calls are serialized
        self._lock = threading.Lock()

    def check_tensors(self, inp: tuple, inp_dtype, out: tuple, out_dtype) -> None:
        """The manifest's input/output shapes and dtypes must be the file's (batch and dynamic dims aside)."""
        def fixed(s):  # batch and dynamic dims compare as unknown
            return [d if isinstance(d, int) and d > 0 else None for d in s[1:]]
        for which, shape, dtype in (("input", inp, inp_dtype), ("output", out, out_dtype)):
            spec: Tensor | None = getattr(self.entry, which)
            if spec is None:
                continue
            if np.dtype(spec.dtype) != np.dtype(dtype):
                raise ManifestError(f"{self.name}: {which} dtype is {np.dtype(dtype)}, manifest says {spec.dtype}")
            if len(spec.shape) != len(shape) or any(a is not None and b is not None and a != b
                                                     for a, b in zip(fixed(spec.shape), fixed(shape))):
                raise ManifestError(f"{self.name}: {which} shape is {list(shape)}, manifest says {list(spec.shape)}")

    def _to_canonical(self, probs: np.ndarray) -> np.ndarray:
        return probs if self._order is None else probs[:, self._order]

    def predict(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


class TFLiteBackend(Backend):
    format = "tflite"

    def __init__(self, path: Path, name: str, entry: Artifact, labels: tuple[str, ...], threads: int = 1,
                 reference_kernels: bool = False):
        """``reference_kernels``: TFLite's reference kernels instead of the optimized ones (XNNPACK and the
        built-in optimized ops): slow, but the same integer arithmetic on every CPU, so a yardstick for
        the optimized kernels, whose rounding differs between x86 and Arm (devices/aarch64_check.py)."""
        super().__init__(name, entry, labels)
        Interpreter, self.runtime = tflite_interpreter_class()
        kw = {}
        if reference_kernels:
            kw["experimental_op_resolver_type"] = sys.modules[Interpreter.__module__].OpResolverType.BUILTIN_REF
            self.runtime += " (reference kernels)"
        with without_litert_banner():
            self.interp = Interpreter(model_path=str(path), num_threads=max(1, threads), **kw)
            self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.inp["shape"])
        self.check_tensors(self.input_shape, self.inp["dtype"], tuple(int(d) for d in self.out["shape"]),
                           self.out["dtype"])
        self.in_q = self._check_quant("input", self.inp)
        self.out_q = self._check_quant("output", self.out)
        check_precision(name, self.precision, any(np.dtype(t["dtype"]).kind in "iu" and len(t["shape"]) > 1
                                                  for t in self.interp.get_tensor_details()))

    def _check_quant(self, which: str, detail: dict):
        dtype = np.dtype(detail["dtype"])  # that it is the manifest's is check_tensors' job
        spec: Tensor | None = getattr(self.entry, which)
        if dtype.kind not in "iu":
            return None
        scale, zp = detail["quantization"]
        if spec is None or spec.scale is None or spec.zero_point is None:
            raise ManifestError(f"{self.name}: manifest lacks the {which} scale/zero-point of an int8 tensor")
        if not np.isclose(spec.scale, scale, rtol=1e-6) or spec.zero_point != int(zp):
            raise ManifestError(f"{self.name}: {which} quantization ({scale}, {zp}) differs from the "
                                f"manifest's ({spec.scale}, {spec.zero_point})")
        return float(spec.scale), spec.zero_point, dtype

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        n = len(batch)
        out = np.empty((n, int(self.out["shape"][-1])), np.float32)
        per_call = self.input_shape[0]  # converted with a fixed batch (1)
        for i in range(0, n, per_call):
            chunk = batch[i:i + per_call]
            if len(chunk) < per_call:
                chunk = np.concatenate([chunk, np.zeros((per_call - len(chunk),) + chunk.shape[1:], np.float32)])
            if self.in_q:
                chunk = quantize(chunk, *self.in_q)
            with self._lock:  # set, invoke, get as one step: another thread's input must not slip in
                self.interp.set_tensor(self.inp["index"], chunk)
                self.interp.invoke()
                y = self.interp.get_tensor(self.out["index"]).copy()
            if self.out_q:
                scale, zp, _ = self.out_q
                y = (y.astype(np.float32) - zp) * scale
            out[i:i + per_call] = y[: min(per_call, n - i)]
        return self._to_canonical(out)


def onnx_session_options(threads: int = 1):
    """The onnxruntime session options every ONNX run of this project uses (device, export, study)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # x86 CPUs without VNNI (AVX2, plain AVX512) compute u8s8 int8 products with saturating 16-bit
    # adds; weights outside [-64, 63] then overflow. This option makes onnxruntime use u8u8 there
    # (a no-op on VNNI and Arm). Measured on an AVX2 EPYC, shipped cbilstm onnx-int8: agreement
    # with Keras 94.4 % -> 98.3 % (what VNNI machines get), 1.62 -> 1.21 ms/face.
    opts.add_session_config_entry("session.x64quantprecision", "1")
    return opts


ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
               "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64"}


class OnnxBackend(Backend):
    format = "onnx"
    GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

    def __init__(self, path: Path, name: str, entry: Artifact, labels: tuple[str, ...], threads: int = 1,
                 providers: list[str] | None = None):
        super().__init__(name, entry, labels)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendError("onnxruntime is not installed: pip install onnxruntime") from e
        blob = path.read_bytes()
        check_precision(name, self.precision, any(op in blob for op in QUANT_OPS))
        opts = onnx_session_options(threads)
        have = ort.get_available_providers()
        wanted = providers or [p for p in (*self.GPU_PROVIDERS, "CPUExecutionProvider") if p in have]
        missing = [p for p in wanted if p not in have]
        if missing:
            log.warning("onnxruntime providers %s are not available here; using %s", missing, have)
            wanted = [p for p in wanted if p in have] or ["CPUExecutionProvider"]
        self.sess = ort.InferenceSession(str(path), opts, providers=wanted)
        self.runtime = f"onnxruntime {ort.__version__} ({self.sess.get_providers()[0]})"
        log.info("%s runs on %s", name, self.sess.get_providers()[0])
        i, o = self.sess.get_inputs()[0], self.sess.get_outputs()[0]
        self.input_name, self.input_shape = i.name, tuple(i.shape)
        self.check_tensors(self.input_shape, ONNX_DTYPES.get(i.type, "float32"), tuple(o.shape),
                           ONNX_DTYPES.get(o.type, "float32"))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        if len(batch) == 0:
            return np.zeros((0, len(LABELS)), np.float32)
        return self._to_canonical(self.sess.run(None, {self.input_name: batch})[0].astype(np.float32))


def select_artifact(manifest: Manifest, backend: str = "auto", precision: str | None = None) -> str:
    """Pick an artifact name: `auto` prefers int8 TFLite where a TFLite runtime exists, else ONNX."""
    arts = manifest.artifacts
    if manifest.kind == "run":
        raise BackendError(f"{manifest.dir} is a training run, not an export: "
                           f"export it first: python -m export --model {manifest.dir}")
    usable = {n: e for n, e in arts.items() if e.status == STATUS_USABLE and e.format != "keras"}
    if backend in arts and arts[backend].format == "keras":
        raise BackendError(f"{backend} is the export's Keras reference, not a device format: use tflite or onnx")
    if backend in arts:  # an exact artifact name
        entry = arts[backend]
        if entry.status != STATUS_USABLE:
            raise BackendError(f"artifact {backend} is {entry.status}" + (f" ({entry.reason})" if entry.reason else "")
                               + ": the export did not pass it; choose a usable one")
        if precision and entry.precision != precision:
            raise BackendError(f"artifact {backend} is {entry.precision}, not {precision}")
        return backend
    have = available_runtimes()
    order = [n for n in AUTO_ORDER if n in usable] + [n for n in usable if n not in AUTO_ORDER]
    if backend != "auto":
        order = [n for n in order if usable[n].format == backend]
    if precision:
        order = [n for n in order if usable[n].precision == precision]
    for n in order:
        if have.get(usable[n].format):
            return n
    want = backend if backend != "auto" else "tflite or onnx"
    raise BackendError(f"no usable {want}{' ' + precision if precision else ''} artifact with an installed "
                       f"runtime (artifacts: {sorted(arts) or 'none'}; runtimes: {have})")


REFERENCE_FACES, REFERENCE_SEED = 4, 0
REFERENCE_ATOL = 0.03  # probability: float kernels differ less; int8 artifacts get their own (export.scoring.check_tolerance)


def reference_probs(backend: "Backend", spec) -> np.ndarray:
    """The model's outputs on preprocess.reference_faces: what export records and the device checks."""
    from .preprocess import reference_faces, scale_pixels
    return backend.predict(scale_pixels(reference_faces(spec.size, REFERENCE_FACES, REFERENCE_SEED), spec))


def check_reference(backend: "Backend", manifest: Manifest, name: str) -> None:
    """Refuse a model whose outputs on the reference faces are not the export's (ManifestError)."""
    c = manifest.artifacts[name].check
    if c is None:
        return
    from .preprocess import reference_faces, scale_pixels
    x = scale_pixels(reference_faces(manifest.preprocessing.size, c["faces"], c["seed"]), manifest.preprocessing)
    diff = float(np.max(np.abs(backend.predict(x) - np.asarray(c["probs"], np.float32))))
    if not diff <= c["atol"]:  # also NaN
        raise ManifestError(f"{name}: outputs on the reference faces differ from the export's by {diff:.3f} "
                            f"(> {c['atol']}): the file, its runtime or the preprocessing is not what was exported")


def load_backend(manifest: Manifest, name: str, threads: int = 1, providers: list[str] | None = None,
                 verify: bool = True, probe: bool = True) -> Backend:
    """Verify the artifact's sha256 against the manifest, then load it, and check its outputs on the
    reference faces. ``probe``: load and check it first in a child process (once per file and runtime
    version, remembered in the cache), so a file that crashes the runtime is an error, not a crash."""
    arts = manifest.artifacts
    if name not in arts:
        raise BackendError(f"manifest has no artifact {name!r} (has {sorted(arts)})")
    entry = arts[name]
    path = artifact_path(manifest, name)
    if verify:
        verify_file(path, entry.sha256, entry.size)
    if probe and entry.format in ("tflite", "onnx"):
        probe_in_child(manifest, name, providers)
    try:
        if entry.format == "tflite":
            backend = TFLiteBackend(path, name, entry, manifest.labels, threads)
        elif entry.format == "onnx":
            backend = OnnxBackend(path, name, entry, manifest.labels, threads, providers)
        else:
            raise BackendError(f"{name}: format {entry.format!r} has no edge backend")
    except (BackendError, ManifestError):
        raise
    except Exception as e:  # the runtime's own error for a file it cannot read: one line
        raise BackendError(f"{name}: {path.name} cannot be loaded: {_one_line(e)}") from None
    size = manifest.preprocessing.size
    if tuple(backend.input_shape[1:3]) != (size, size):
        raise ManifestError(f"{name}: the manifest's preprocessing size {size} does not match the model's input "
                            f"{list(backend.input_shape)}")
    try:
        check_reference(backend, manifest, name)
    except ManifestError:
        raise
    except Exception as e:  # it loaded, but does not run
        raise BackendError(f"{name}: {path.name} does not run: {_one_line(e)}") from None
    return backend


def _one_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"[:240]


def _probe_cache() -> Path:
    return cache_dir("probed")


def probe_in_child(manifest: Manifest, name: str, providers: list[str] | None = None) -> None:
    """Load + check ``name`` in a child process; a crash (a signal) or an error there is a BackendError
    here. A file that passed once (same sha256, runtime versions) is not probed again."""
    import subprocess

    from .versions import package_versions
    entry = manifest.artifacts[name]
    runtimes = package_versions(("ai-edge-litert", "tflite-runtime", "onnxruntime", "onnxruntime-gpu"))
    key = hashlib.sha256(json.dumps([entry.sha256, runtimes, providers, entry.check]).encode()).hexdigest()[:32]
    marker = _probe_cache() / key
    if marker.is_file():
        return
    code = ("import sys\nfrom edge_runtime.backends import _probe_main\nsys.exit(_probe_main())")
    args = [sys.executable, "-c", code, str(manifest.dir), name, json.dumps(providers)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SOURCE_ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired:
        raise BackendError(f"{name}: loading {entry.file} did not finish in 300 s") from None
    if r.returncode < 0:
        raise BackendError(f"{name}: loading {entry.file} crashed the runtime (signal {-r.returncode}): "
                           "the file is damaged or not what its manifest says")
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        raise BackendError(lines[-1] if lines else f"{name}: probing {entry.file} failed (exit {r.returncode})")
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{entry.sha256} {name}\n")
    except OSError:  # a read-only home (systemd's ProtectHome): probe again next time
        pass


def _probe_main() -> int:
    """The child of probe_in_child: argv = manifest folder, artifact, providers (JSON)."""
    import logging
    logging.disable(logging.CRITICAL)
    folder, name, providers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    try:
        load_backend(read_manifest(folder), name, providers=providers, probe=False)
    except (BackendError, ManifestError) as e:
        print(str(e), file=sys.stderr)
        return 2
    return 0

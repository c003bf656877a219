"""A manifest is untrusted input: files outside its folder, wrong types and unbounded numbers are
one line and exit 2 before any source is opened, and a precision claim is checked against the
model file (the untrusted-input issue, item 1)."""
from __future__ import annotations

import json
import shutil

import pytest

from edge_runtime.__main__ import main
from edge_runtime.packaged import packaged_dir

PACKAGED_ARTIFACTS = packaged_dir("cbilstm")
from edge_runtime.manifest import read_manifest
from tests.conftest import REPO


@pytest.fixture
def art(tmp_path):
    d = tmp_path / "art"
    shutil.copytree(PACKAGED_ARTIFACTS, d)
    return d


def edit(d, fn):
    p = d / "manifest.json"
    m = json.loads(p.read_text())
    m = fn(m)
    p.write_text(json.dumps(m) if not isinstance(m, str) else m)


def refused(d, capsys, words: str):
    assert main(["--artifacts", str(d), "--source", "/dev/video97", "--backend", "tflite-int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def _set(path, value):
    def fn(m):
        node = m
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return m
    return fn


@pytest.mark.parametrize("change, words", [
    (_set(["artifacts", "tflite-int8", "file"], "/etc/passwd"), "plain file name"),
    (_set(["artifacts", "tflite-int8", "file"], "../outside.tflite"), "plain file name"),
    (_set(["artifacts", "tflite-int8", "file"], None), "plain file name"),
    (_set(["artifacts", "tflite-int8", "sha256"], 12), "64 hex digits"),
    (_set(["artifacts", "tflite-int8", "size"], "big"), "byte count"),
    (_set(["artifacts", "tflite-int8"], None), "map names to objects"),
    (_set(["preprocessing", "size"], 10**6), "[8, 1024]"),
    (_set(["preprocessing", "scale"], float("nan")), "finite"),
    (_set(["preprocessing", "scale"], 0), "scale must be positive"),  # every face the same input: wrong labels
    (_set(["preprocessing", "scale"], -1 / 255), "scale must be positive"),
    (_set(["preprocessing"], None), "preprocessing = None should be an object"),
    (_set(["labels"], "angry"), "labels = 'angry' should be a list of strings"),
    (_set(["artifacts", "tflite-int8", "fiel"], "x.tflite"), "unknown key 'fiel'"),
    (_set(["artifacts", "tflite-int8", "status"], "Usable"), "status = 'Usable' must be one of usable, rejected, failed"),
    (_set(["modle"], "cbilstm"), "unknown key 'modle'"),
    (_set(["kind"], "weights"), "kind = 'weights' must be one of run, artifacts, peer"),
    (_set(["schema"], 99), "written by a newer version (schema 99"),
    (_set(["artifacts"], None), "artifacts = None should be an object"),
    (_set(["artifacts", "tflite-int8", "input", "dtype"], "bogus"), "dtype = 'bogus' must be one of"),
    (_set(["artifacts", "tflite-int8", "input", "shape"], "1x48x48"), "should be a list of integers"),
    (_set(["schema"], 0), "schema 0 is not a version"),
    (lambda m: json.dumps(m)[:-1] + ', "kind": "peer"}', "key 'kind' appears twice"),
    (lambda m: [m], "not a JSON object"),
    (lambda m: "{not json", "unreadable manifest"),
])
def test_bad_manifest_is_one_line_exit_2(art, capsys, change, words):
    edit(art, change)
    refused(art, capsys, words)


def test_a_symlinked_model_file_is_refused_even_when_its_sha256_matches(art, tmp_path, capsys):
    f = art / read_manifest(art).artifacts["tflite-int8"].file
    outside = tmp_path / "elsewhere.tflite"
    shutil.move(f, outside)
    f.symlink_to(outside)
    refused(art, capsys, "symlink")


@pytest.mark.parametrize("name, other, claim", [("onnx-fp32", "onnx-int8", "fp32"),
                                                ("onnx-int8", "onnx-fp32", "int8")])
def test_a_precision_claim_is_checked_against_the_model_file(art, capsys, name, other, claim):
    """Another model file under an entry, with its sha256 and size updated to match: the file is
    intact but not what the entry claims; the device refuses it instead of reporting a wrong precision."""
    m = read_manifest(art).to_dict()
    entry, swapped = m["artifacts"][name], m["artifacts"][other]

    def fn(doc):
        doc["artifacts"][name].update(file=swapped["file"], sha256=swapped["sha256"], size=swapped["size"])
        return doc
    edit(art, fn)
    assert entry["precision"] == claim
    assert main(["--artifacts", str(art), "--source", "/dev/video97", "--backend", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the manifest says precision '{claim}'" in err[0], err


def test_a_tflite_precision_claim_is_checked_too(art):
    """The int8 TFLite file, intact, listed as fp32: the whole of stderr is one line (LiteRT's
    XNNPACK banner, printed while the interpreter is built, is held back)."""
    import subprocess
    import sys

    from tests.conftest import REPO
    edit(art, _set(["artifacts", "tflite-int8", "precision"], "fp32"))
    r = subprocess.run([sys.executable, "-m", "edge_runtime", "--artifacts", str(art), "--backend", "tflite-int8",
                        "--source", "/dev/video97"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "edge_runtime: error: tflite-int8: the manifest says precision 'fp32' but the model file has integer "
        "(quantized) tensors"], r.stderr


@pytest.mark.parametrize("size", [10**6, 2**31])
def test_a_huge_input_size_is_refused_under_a_memory_limit(art, size):
    """The value that once exhausted the machine's memory, run with the address space capped at
    2 GiB: one line and exit 2, no MemoryError, no traceback."""
    import resource
    import subprocess
    import sys

    from tests.conftest import REPO
    edit(art, _set(["preprocessing", "size"], size))

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    r = subprocess.run([sys.executable, "-m", "edge_runtime", "--artifacts", str(art), "--source", "/dev/video97"],
                       capture_output=True, text=True, cwd=REPO, timeout=60, preexec_fn=cap)
    assert r.returncode == 2 and "[8, 1024]" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_manifest_is_typed_and_every_writer_goes_through_the_reader_s_schema(art, tmp_path):
    from edge_runtime.manifest import Artifact, Manifest, ManifestError, write_manifest
    m = read_manifest(art)
    assert isinstance(m, Manifest) and m.kind == "artifacts" and m.dir == str(art)
    t8 = m.artifacts["tflite-int8"]
    assert isinstance(t8, Artifact) and t8.input.dtype == "int8" and t8.input.shape == (1, 48, 48, 1)
    assert m.usable().keys() == {n for n, a in m.artifacts.items() if a.status == "usable"}
    on_disk = json.loads((art / "manifest.json").read_text())
    assert m.to_dict() == on_disk  # nothing lost or invented
    bad = dict(on_disk, labels=["happy"] * 7)
    with pytest.raises(ManifestError, match="not the FER2013 emotions"):
        write_manifest(tmp_path / "new", bad)
    assert not (tmp_path / "new" / "manifest.json").exists()  # refused before anything is written
    written = write_manifest(tmp_path / "new", on_disk)
    assert read_manifest(tmp_path / "new") == written
    run = json.loads((REPO / "models" / "thesis" / "manifest.json").read_text())
    for key in ("data", "metrics", "model_sha256"):
        with pytest.raises(ManifestError, match=f"a run manifest needs {key}"):
            Manifest.from_dict({**run, key: None})


@pytest.mark.parametrize("backend, change, words", [
    ("tflite-int8", _set(["preprocessing", "size"], 64), "preprocessing size 64 does not match the model's input"),
    ("onnx-fp32", _set(["preprocessing", "size"], 64), "preprocessing size 64 does not match the model's input"),
    ("onnx-fp32", _set(["artifacts", "onnx-fp32", "input", "shape"], [1, 99, 99, 3]), "input shape is"),
    ("onnx-fp32", _set(["artifacts", "onnx-fp32", "input", "dtype"], "int8"), "input dtype is float32, manifest says int8"),
    ("tflite-int8", _set(["artifacts", "tflite-int8", "output", "shape"], [1, 8]), "output shape is [1, 7]"),
    ("onnx-int8", _set(["artifacts", "onnx-int8", "status"], "rejected"), "artifact onnx-int8 is rejected"),
])
def test_what_the_manifest_says_of_a_model_is_checked_against_the_file(art, capsys, backend, change, words):
    """Shapes, dtypes and the input size come from the file too; the two must agree before a frame
    is read (else the first face would crash the daemon), and a rejected artifact is not served."""
    edit(art, change)
    assert main(["--artifacts", str(art), "--source", "/dev/video97", "--backend", backend]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_odd_json_and_odd_ports_are_one_line(art, capsys):
    (art / "manifest.json").write_text('{"schema": ' + "9" * 5000 + "}")
    refused(art, capsys, "unreadable manifest")
    (art / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(art, capsys, "unreadable manifest")
    for flags in (["--http", "127.0.0.1:²"], ["--mqtt", "broker:²"], ["--source", "²"]):
        assert main(["--artifacts", str(art), *flags]) == 2, flags
        assert len(capsys.readouterr().err.strip().splitlines()) == 1, flags

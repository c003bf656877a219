"""One-way layering, read from the source with ast: edge_runtime <- train <- export <- benchmarks
(devices may use them all). A module never imports a package above its own, nor a private name
(``_x``) of another package."""
import ast

from .conftest import REPO

RANK = {"edge_runtime": 0, "train": 1, "export": 2, "benchmarks": 3, "devices": 4}


def imports(path):
    """(line, module, names) of every absolute import in a file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [a.name for a in node.names]


def test_no_package_imports_one_above_it_or_another_packages_private_names():
    bad = []
    for pkg, rank in RANK.items():
        for f in sorted((REPO / pkg).rglob("*.py")):
            for line, module, names in imports(f):
                top = module.split(".")[0]
                if top not in RANK or top == pkg:
                    continue
                where = f"{f.relative_to(REPO)}:{line}"
                if RANK[top] > rank:
                    bad.append(f"{where} imports {module}: {pkg} may not depend on {top}")
                bad += [f"{where} imports the private {module}.{n}" for n in names if n.startswith("_")]
    assert not bad, "\n".join(bad)


def test_the_edge_runtime_imports_no_training_stack():
    """The device side: numpy, OpenCV, the runtimes, paho; never TensorFlow or Keras."""
    heavy = {"tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "sklearn", "scikeras", "dask", "matplotlib"}
    # the one exception: the batch analyser runs on a Dask cluster when asked (--dask), importing
    # dask.distributed inside the function that needs it, from the [batch] extra
    allowed = {("edge_runtime/batch_worker.py", "dask")}
    bad = [f"{f.relative_to(REPO)}:{line} imports {module}"
           for f in sorted((REPO / "edge_runtime").rglob("*.py"))
           for line, module, _ in imports(f) if module.split(".")[0] in heavy
           and (str(f.relative_to(REPO)), module.split(".")[0]) not in allowed]
    assert not bad, "\n".join(bad)
    tree = ast.parse((REPO / "edge_runtime" / "batch_worker.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [n for n in top if any(a.name.startswith("dask") for a in n.names)
                or (isinstance(n, ast.ImportFrom) and (n.module or "").startswith("dask"))], \
        "edge_runtime/batch_worker.py may import dask only inside a function"

"""The package's import graph: no module takes part in an import cycle (counted here with
grimp, independently of the import-linter contracts `make test` also checks), and the
layers of docs/architecture.md hold for every direct import."""

import grimp

LAYERS = [  # highest first; a module may import its own layer's package and those below
    {"haloconv.cli"},
    {"haloconv.api", "haloconv.nn", "haloconv.ndimage"},
    {"haloconv.planner", "haloconv.dispatch"},
    {"haloconv.distributed"},
    {"haloconv.engines"},
    {"haloconv.costmodel", "haloconv.files"},
    {"haloconv.compute"},
    {"haloconv.options"},
    {"haloconv.tiling"},
    {"haloconv.text", "haloconv.units", "haloconv.progress"},
]


def _layer(module: str) -> tuple[int, str] | None:
    for i, layer in enumerate(LAYERS):
        for top in layer:
            if module == top or module.startswith(top + "."):
                return i, top
    return None


def _graph():
    return grimp.build_graph("haloconv")


def test_no_import_cycles():
    g = _graph()
    mods = sorted(g.modules)
    edges = {m: sorted(g.find_modules_directly_imported_by(m)) for m in mods}
    # Tarjan's strongly connected components
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(comp)

    for m in mods:
        if m not in index:
            visit(m)
    # a package's __init__ re-exporting its modules is not a cycle of code: leave packages out
    packages = {m for m in mods if any(o.startswith(m + ".") for o in mods)}
    cycles = [c for c in comps if len([m for m in c if m not in packages]) > 1]
    assert len(mods) > 40 and not cycles, cycles


def test_every_import_goes_down_the_layers():
    g = _graph()
    wrong = []
    for m in g.modules:
        a = _layer(m)
        if a is None:
            continue
        for imported in g.find_modules_directly_imported_by(m):
            b = _layer(imported)
            if b is not None and (b[0] < a[0] or (b[0] == a[0] and b[1] != a[1])):
                wrong.append(f"{m} -> {imported}")
    assert not wrong, wrong
    placed = [m for m in g.modules if m.count(".") == 1 and _layer(m) is None]
    assert sorted(placed) == ["haloconv.__main__"], placed  # every module has its layer


def test_every_engine_computes_a_tile_through_the_one_call():
    """compute/tile.py is the only caller of the per-tile compute functions outside compute/
    (threads, processes, torchrun, streams and nn all go through compute_tile/tile_backward;
    the array engine and streams of filters through compute_tile_array)."""
    import re
    from pathlib import Path

    import haloconv

    src = Path(haloconv.__file__).parent
    direct = re.compile(r"\b(backends\.compute|kernels\.conv_tile|kernels\.conv_tile_backward|\.compute_array)\(")
    callers = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                     if "compute" not in p.relative_to(src).parts and direct.search(p.read_text()))
    assert callers == [], callers
    users = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if "compute_tile(" in p.read_text())
    assert {"engines/inprocess/tensors.py", "engines/spmd/steps.py", "engines/stream/job.py",
            "nn/functional.py"} <= set(users), users
    array_users = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if "compute_tile_array(" in p.read_text())
    assert {"engines/inprocess/arrays.py", "engines/stream/job.py"} <= set(array_users), array_users


def test_each_operation_keeps_its_master_and_worker_halves_in_one_module():
    """Every command an operation's master half posts names an op that the same module
    registers with @worker_op, and names that module, so a worker process can load it."""
    import re
    from pathlib import Path

    import haloconv
    from haloconv.engines.processes import worker

    src = Path(haloconv.__file__).parent / "engines"
    posted, registered = {}, {}
    for path in [*src.glob("processes/ops/*.py"), src / "stream" / "workers.py"]:
        text = path.read_text()
        for op in re.findall(r'"op": "(\w+)", "module": __name__', text):
            posted.setdefault(op, set()).add(path.name)
        for op in re.findall(r'@worker_op\("(\w+)"\)', text):
            registered.setdefault(op, set()).add(path.name)
    assert posted == registered, (posted, registered)
    assert set(posted) == {"conv", "backward", "dynamic", "probe", "scatter", "layer", "gather", "free", "stream"}
    worker_loop = (src / "processes" / "worker.py").read_text()
    assert not re.search(r'op == "(conv|layer|probe)"', worker_loop)  # no if/elif dispatch
    import haloconv.engines.processes.ops.static  # noqa: F401 - registers its worker halves on import
    assert {"conv", "backward"} <= set(worker.OPS)


def test_tables_are_rendered_in_one_place():
    """text.table is the package's one table renderer: no other module builds column widths."""
    import re
    from pathlib import Path

    import haloconv

    src = Path(haloconv.__file__).parent
    own = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                 if p.name != "text.py" and re.search(r"widths = \[max\(len\(", p.read_text()))
    assert own == [], own


# the faces take a user's keywords; below them, functions take values (options.py)
FACES = ("haloconv.cli", "haloconv.api", "haloconv.ndimage", "haloconv.nn")
FACE_FUNCTIONS = {("haloconv.planner.plans", "plan")}  # haloconv.plan


def _parameters(fn) -> int:
    a = fn.args
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
    return n - bool(a.args and a.args[0].arg in ("self", "cls"))


def test_functions_below_the_faces_take_at_most_ten_parameters():
    """Options are values: no function below the faces takes more than 10 parameters."""
    import ast
    import pathlib

    import haloconv

    root = pathlib.Path(haloconv.__file__).parent
    wide = []
    for path in root.rglob("*.py"):
        module = "haloconv." + ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        if module.startswith(FACES):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _parameters(node) > 10 and \
                    (module, node.name) not in FACE_FUNCTIONS:
                wide.append(f"{module}.{node.name}: {_parameters(node)}")
    assert not wide, wide

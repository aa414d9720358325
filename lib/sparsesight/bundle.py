"""The result bundle: SparseSight's one output protocol (docs/ARCHITECTURE.md).

A zip (or a directory) holding `manifest.json` and the files it lists:

    {"model": "mlcsc", "model_version": "sha256:...", "image": "case_003", "created": "...",
     "outputs": [{"name": "label", "file": "label.nii.gz", "kind": "labelmap", "classes": {"1": "oedema", ...}},
                 {"name": "component/enhancing/T1ce", "file": "component_enhancing_T1ce.nii.gz", "kind": "scalar"},
                 {"name": "params", "file": "params.csv", "kind": "table"},
                 {"name": "params_plot", "file": "params.png", "kind": "plot"}]}

Kinds: labelmap (NIfTI of class indices, `classes` required), scalar (NIfTI), table (CSV), plot (PNG).
All volumes share the input's affine and spatial shape. Extra keys of an output (method, faithfulness,
colormap, range, ...) are kept as they are. Explanation quality (explain/quality.py): the manifest's
`explanation_quality` and an output's `quality` are objects whose metric sets carry `flags` (a list of strings,
the aims missed) and `faithful` (a boolean); validate checks that shape.

`format` (FORMAT) says which version of this protocol wrote the bundle: 1 (no key: before the quality objects),
2 (explanation quality with every map, the attribution quality table). Readers say when a bundle is older or newer
than the format they read (the Slicer module's and the viewer's scene.format_note).
"""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np

from .data.io import nifti_image_from_bytes
from .errors import BundleError

KINDS = {"labelmap": (".nii.gz",), "scalar": (".nii.gz",), "table": (".csv",), "plot": (".png",)}
MANIFEST = "manifest.json"
FORMAT = 2
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def file_name(name: str, suffix: str) -> str:
    """A safe flat file name for an output name: 'component/enhancing/T1ce' -> 'component_enhancing_T1ce.nii.gz'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") + suffix


class BundleWriter:
    """Collects outputs into a staging directory, then writes the bundle as a zip or a directory."""

    def __init__(self, model: str, model_version: str, image: str, affine, spatial_shape, **extra):
        self.affine = np.asarray(affine, dtype=np.float64)
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.manifest = {"format": FORMAT, "model": model, "model_version": model_version, "image": image,
                         "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "spatial_shape": list(self.spatial_shape), "affine": self.affine.tolist(),
                         **extra, "outputs": []}
        self._dir = Path(tempfile.mkdtemp(prefix="sparsesight-bundle-"))

    def _entry(self, name: str, kind: str, meta: dict) -> tuple[dict, Path]:
        """Register output `name` and return its manifest entry and the staging path to write."""
        if any(o["name"] == name for o in self.manifest["outputs"]):
            raise BundleError(f"duplicate output name {name!r}")
        entry = {"name": name, "file": file_name(name, KINDS[kind][0]), "kind": kind, **meta}
        self.manifest["outputs"].append(entry)
        return entry, self._dir / entry["file"]

    def add_volume(self, name: str, array, kind: str = "scalar", classes: dict | None = None,
                   dtype=None, **meta) -> dict:
        """A 3D volume in the input's geometry. Labelmaps are uint8; scalars float32, or int16 scaled when
        dtype=np.int16 (halves the size of large maps; the NIfTI slope restores the values)."""
        arr = np.asarray(array)
        if arr.shape != self.spatial_shape:
            raise BundleError(f"output {name!r} has shape {arr.shape}; the input's is {self.spatial_shape}")
        if kind == "labelmap":
            if not classes:
                raise BundleError(f"labelmap {name!r} needs its class names")
            arr = arr.astype(np.uint8)
            meta["classes"] = {str(k): v for k, v in classes.items()}
        elif kind == "scalar":
            arr = arr.astype(np.float32)
            meta.setdefault("range", [float(arr.min()), float(arr.max())])
        else:
            raise BundleError(f"volume kind must be labelmap or scalar, not {kind!r}")
        img = nib.Nifti1Image(arr, self.affine)
        img.header.set_xyzt_units("mm")
        if dtype is not None and kind == "scalar":
            img.set_data_dtype(dtype)
        entry, path = self._entry(name, kind, meta)
        nib.save(img, str(path))
        return entry

    def add_table(self, name: str, rows: list[dict], **meta) -> dict:
        """A table as CSV (header from the union of the rows' keys, in first-seen order)."""
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        entry, path = self._entry(name, "table", meta)
        path.write_bytes(buf.getvalue().encode())
        return entry

    def add_plot(self, name: str, png: bytes | str | Path, **meta) -> dict:
        """A PNG picture (bytes or a file path), e.g. from matplotlib's savefig."""
        data = png if isinstance(png, bytes) else Path(png).read_bytes()
        if not data.startswith(_PNG_MAGIC):
            raise BundleError(f"plot {name!r} is not a PNG")
        entry, path = self._entry(name, "plot", meta)
        path.write_bytes(data)
        return entry

    def write(self, path) -> Path:
        """Write to `path`: a .zip file, or a directory otherwise. Returns the path. Staging is removed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        (self._dir / MANIFEST).write_text(json.dumps(self.manifest, indent=2))
        try:
            if path.suffix == ".zip":
                tmp = path.with_name(path.name + ".tmp")
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:  # NIfTI/PNG are compressed already
                    z.write(self._dir / MANIFEST, MANIFEST)
                    for o in self.manifest["outputs"]:
                        z.write(self._dir / o["file"], o["file"])
                tmp.replace(path)
            else:
                if path.exists():
                    shutil.rmtree(path)
                shutil.copytree(self._dir, path)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
        return path


@dataclass
class Bundle:
    """A bundle opened for reading: its manifest and access to each output by name."""

    path: Path
    manifest: dict
    _zip: zipfile.ZipFile | None = field(default=None, repr=False)

    @property
    def outputs(self) -> list[dict]:
        return self.manifest["outputs"]

    def output(self, name: str) -> dict:
        for o in self.outputs:
            if o["name"] == name:
                return o
        raise KeyError(f"bundle has no output {name!r}; it has {[o['name'] for o in self.outputs]}")

    def read_bytes(self, name_or_file: str) -> bytes:
        fname = next((o["file"] for o in self.outputs if o["name"] == name_or_file), name_or_file)
        if self._zip is not None:
            return self._zip.read(fname)
        return (self.path / fname).read_bytes()

    def volume(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(array, affine) of a labelmap or scalar output."""
        img = nifti_image_from_bytes(self.read_bytes(name))
        if self.output(name)["kind"] == "labelmap":
            return np.asarray(img.dataobj).astype(np.uint8), np.asarray(img.affine)
        return img.get_fdata(dtype=np.float32), np.asarray(img.affine)

    def table(self, name: str) -> list[dict]:
        return list(csv.DictReader(io.StringIO(self.read_bytes(name).decode())))

    def close(self):
        if self._zip is not None:
            self._zip.close()


def read(path) -> Bundle:
    """Open a bundle (zip or directory) and parse its manifest (no validation: see validate)."""
    path = Path(path)
    try:
        if path.is_dir():
            return Bundle(path, json.loads((path / MANIFEST).read_text()))
        z = zipfile.ZipFile(path)
        return Bundle(path, json.loads(z.read(MANIFEST)), z)
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise BundleError(f"{path.name} is not a result bundle (zip or directory with {MANIFEST}): {e}") from None


def _quality_problems(where: str, q) -> list[str]:
    """What is wrong with an `explanation_quality` / `quality` object: not an object, flags not a list of strings,
    faithful not a boolean (at any depth)."""
    if not isinstance(q, dict):
        return [f"{where}: quality is not an object"]
    problems = []
    if "flags" in q and not (isinstance(q["flags"], list) and all(isinstance(f, str) for f in q["flags"])):
        problems.append(f"{where}: quality flags must be a list of strings")
    if "faithful" in q and not isinstance(q["faithful"], bool):
        problems.append(f"{where}: quality faithful must be true or false")
    for k, v in q.items():
        if isinstance(v, dict):
            problems += _quality_problems(f"{where}.{k}", v)
    return problems


def validate(path) -> dict:
    """Check a bundle against the protocol; returns its manifest or raises BundleError with every problem."""
    b = read(path)
    try:
        m, problems = b.manifest, []
        for key in ("model", "model_version", "image", "created", "outputs"):
            if key not in m:
                problems.append(f"manifest lacks {key!r}")
        if problems:
            raise BundleError("; ".join(problems))
        names = [o.get("name") for o in m["outputs"]]
        if len(set(names)) != len(names):
            problems.append("output names are not unique")
        files = set(b._zip.namelist()) if b._zip is not None else {p.name for p in b.path.iterdir()}
        ref_affine, ref_shape = None, None
        if "explanation_quality" in m:
            problems += _quality_problems("explanation_quality", m["explanation_quality"])
        for o in m["outputs"]:
            kind, fname = o.get("kind"), o.get("file", "")
            for key in ("quality", "input_noise", "input_grid", "label_consistency"):
                if key in o:
                    problems += _quality_problems(f"{o.get('name')}.{key}" if key != "quality" else str(o.get("name")),
                                                  o[key])
            if kind not in KINDS:
                problems.append(f"{o.get('name')}: unknown kind {kind!r}")
                continue
            if "/" in fname or "\\" in fname or fname.startswith(".") or fname not in files:
                problems.append(f"{o['name']}: file {fname!r} missing or not a plain name")
                continue
            if not fname.endswith(KINDS[kind]):
                problems.append(f"{o['name']}: a {kind} must be a {KINDS[kind][0]} file")
                continue
            data = b.read_bytes(fname)
            if kind in ("labelmap", "scalar"):
                try:
                    img = nifti_image_from_bytes(data)
                except Exception as e:  # noqa: BLE001 - any decoding failure is a protocol violation
                    problems.append(f"{o['name']}: unreadable NIfTI ({e})")
                    continue
                if kind == "labelmap" and not o.get("classes"):
                    problems.append(f"{o['name']}: labelmap without classes")
                if ref_affine is None:
                    ref_affine, ref_shape = img.affine, img.shape[:3]
                elif img.shape[:3] != ref_shape or not np.allclose(img.affine, ref_affine, atol=1e-4):
                    problems.append(f"{o['name']}: geometry differs from the other volumes")
            elif kind == "plot" and not data.startswith(_PNG_MAGIC):
                problems.append(f"{o['name']}: not a PNG")
            elif kind == "table":
                try:
                    next(csv.reader(io.StringIO(data.decode())))
                except (UnicodeDecodeError, StopIteration):
                    problems.append(f"{o['name']}: empty or unreadable CSV")
        if "spatial_shape" in m and ref_shape is not None and list(ref_shape) != list(m["spatial_shape"]):
            problems.append("volumes do not have the manifest's spatial_shape")
        if "affine" in m and ref_affine is not None and not np.allclose(ref_affine, m["affine"], atol=1e-4):
            problems.append("volumes do not have the manifest's affine")
        if problems:
            raise BundleError("invalid bundle: " + "; ".join(problems))
        return m
    finally:
        b.close()

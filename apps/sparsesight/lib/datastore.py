"""A local datastore that refuses what would break it.

MONAI Label's LocalDatastore stores whatever it is given under whatever id it is given: `../x` or an absolute
path as image id (or label tag) writes outside the datastore, and a truncated file or a label of the wrong shape
is stored and only fails later, inside training. This subclass checks every upload first:

- ids and tags are plain names (no separator, no '..', not absolute, not empty)         -> 400
- the upload is a NIfTI file (.nii / .nii.gz, recognised by its bytes, not its name)     -> 415
- the content is usable: readable, 4 channels FLAIR/T1/T1ce/T2, finite voxels; a label
  has its image's spatial shape and affine and values 0..3 (sparsesight.data.io)        -> 422
- a DWI (params {"dwi": {"bvals", "bvecs" | "grad", "big_delta", "small_delta", ...}}): 4D within
  the same size limits, one protocol entry per volume, timing given and plausible; stored
  with its sidecars <id>.bval, <id>.bvec, <id>.json (timing), removed with it             -> 422
- unknown image or label                                                                 -> 404
- replacing an image whose stored labels have another shape                              -> 409

The upload is validated in a temporary folder outside the datastore, then copied next to its destination
under a name the datastore does not list, fsync'd and moved into place with os.replace, so a refused or
interrupted upload leaves every stored file and the datastore's index as they were.

Crash safety: the index (datastore_v2.json) is written to a temp file, fsync'd, the previous index kept as
datastore_v2.json.bak, then os.replace'd and the folder fsync'd. On start an empty or corrupt index is set
aside (datastore_v2.json.corrupt-<time>) and rebuilt from the .bak when that is valid, else from the files on
disk, with a warning; temp files of interrupted writes are removed. The server always starts.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, Optional

import nibabel as nib
import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel

from sparsesight.atomic import fsync_dir, write_durably
from sparsesight.data import io as sio

from .http_errors import (
    BAD_REQUEST,
    CONFLICT,
    NOT_FOUND,
    UNPROCESSABLE,
    UNSUPPORTED_MEDIA,
    check_id,
    check_new_id,
    http_errors,
    refuse,
)

logger = logging.getLogger(__name__)

CHANNELS = 4  # FLAIR, T1, T1ce, T2 (docs/ARCHITECTURE.md, data conventions)
#: image info only the server writes (a PACS study's resampled series, which the input checks trust)
SERVER_INFO = ("series_grids",)


def check_client_info(info) -> None:
    """400 for image info that sets what only the server may (SERVER_INFO)."""
    taken = sorted(k for k in SERVER_INFO if isinstance(info, dict) and k in info)
    if taken:
        raise refuse(BAD_REQUEST, f"image info {taken} is written by the server (a PACS study's series), not by a "
                                  f"request")
NIFTI_EXTENSIONS = ("*.nii.gz", "*.nii")
TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")  # ".<name>.<uuid hex>.tmp": an interrupted write of ours
STALE_UPLOAD_SECONDS = 3600  # our upload work folders in TMPDIR older than this belong to a dead process


def nifti_suffix(path: str) -> str:
    """'.nii.gz' or '.nii' from the file's first bytes; 415 for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise refuse(UNPROCESSABLE, f"the upload could not be read: {e}") from e
    if head[:2] == b"\x1f\x8b":
        return ".nii.gz"
    if len(head) == 4 and (int.from_bytes(head, "little") in (348, 540) or int.from_bytes(head, "big") in (348, 540)):
        return ".nii"
    if not head:
        raise refuse(UNPROCESSABLE, "the upload is empty: send the NIfTI file's content")
    raise refuse(
        UNSUPPORTED_MEDIA,
        "the upload is not a NIfTI image (.nii or .nii.gz); convert it first (e.g. SimpleITK.WriteImage or "
        "nibabel.save)",
    )


class SparseSightDatastore(LocalDatastore):
    def __init__(self, datastore_path: str, limits=None, **kwargs):
        """limits: the app's security.Settings (voxel and inflated-byte caps of an upload); None for no caps."""
        self._limits = {"max_voxels": limits.max_voxels, "max_bytes": limits.max_decompressed_bytes} if limits else {}
        kwargs.setdefault("extensions", NIFTI_EXTENSIONS)
        # one reconcile at a time: the file watcher's thread and a delete's own reconcile both walk the index
        self._reconcile_lock = threading.RLock()
        super().__init__(datastore_path, **kwargs)

    # ------------------------------------------------------------------ crash safety
    def sweep_temp_files(self) -> None:
        """Remove what interrupted writes of ours left: temp files in the datastore, old upload folders.

        Called once by the server process at start (integrity.sweep), never by a training process, whose
        datastore would otherwise delete a temp file the server is about to rename."""
        removed = 0
        for folder, _, names in os.walk(self._datastore_path):
            for name in names:
                if TEMP_NAME.match(name):
                    try:
                        os.unlink(os.path.join(folder, name))
                        removed += 1
                    except OSError:
                        pass
        tmp = tempfile.gettempdir()
        for name in os.listdir(tmp) if os.path.isdir(tmp) else []:
            path = os.path.join(tmp, name)
            try:
                if name.startswith("sparsesight-upload-") and time.time() - os.stat(path).st_mtime > STALE_UPLOAD_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
            except OSError:
                pass
        if removed:
            logger.warning(f"removed {removed} temp file(s) left by interrupted writes")

    def _read_index(self, path: str) -> Optional[LocalDatastoreModel]:
        """The index at `path`, None when it is missing, empty or not a valid index."""
        try:
            with open(path, "rb") as f:
                text = f.read()
            return LocalDatastoreModel.model_validate_json(text) if text.strip() else None
        except (OSError, ValueError):
            return None

    def _init_from_datastore_file(self, throw_exception=False):
        """The stock reader, except that an empty or corrupt index is rebuilt instead of stopping the server."""
        path = self._datastore_config_path
        with FileLock(self._lock_file):
            try:
                ts = os.stat(path).st_mtime
            except FileNotFoundError:
                return
            if ts == self._config_ts:
                return
            model = self._read_index(path)
            if model is None:
                model = self._recover_index(path)
            model.base_path = self._datastore_path
            self._datastore = model
            self._config_ts = os.stat(path).st_mtime if os.path.exists(path) else 0

    def _recover_index(self, path: str) -> LocalDatastoreModel:
        """Set the bad index aside; the .bak when valid, else an empty index (reconcile re-adds files on disk)."""
        aside = f"{path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        os.replace(path, aside)
        model = self._read_index(path + ".bak")
        source = "its backup datastore_v2.json.bak" if model is not None else "the image and label files on disk"
        if model is None:
            model = LocalDatastoreModel(name="new-dataset", description="New Dataset",
                                        images_dir=self._datastore.images_dir, labels_dir=self._datastore.labels_dir)
        logger.warning(f"datastore index {os.path.basename(path)} was empty or corrupt (kept as "
                       f"{os.path.basename(aside)}): rebuilt from {source}")
        self._datastore = model
        self._datastore.base_path = self._datastore_path
        self._update_datastore_file(lock=False)
        return model

    def _update_datastore_file(self, lock=True):
        """Atomic index write: temp + fsync, previous index hard-linked to .bak, os.replace, folder fsync."""
        if lock:
            with FileLock(self._lock_file):
                return self._update_datastore_file(lock=False)
        path = self._datastore_config_path
        folder = os.path.dirname(path) or "."
        data = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str).encode()
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            write_durably(tmp, data)
            if os.path.exists(path):  # keep the previous version: a second name for its file, swapped in atomically
                bak_tmp = os.path.join(folder, f".{os.path.basename(path)}.bak.{uuid.uuid4().hex}.tmp")
                try:
                    os.link(path, bak_tmp)
                except OSError:
                    shutil.copyfile(path, bak_tmp)
                os.replace(bak_tmp, path + ".bak")
            self._ignore_event_config = True
            os.replace(tmp, path)
            fsync_dir(folder)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._config_ts = os.stat(path).st_mtime

    # ------------------------------------------------------------------ helpers
    def _object(self, image_id):
        check_id(image_id)
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            raise refuse(
                NOT_FOUND,
                f"image {image_id!r} is not in the datastore; GET /datastore/?output=all lists the image ids",
            )
        return obj

    def _image_file(self, image_id: str, obj) -> str:
        return os.path.realpath(os.path.join(self._datastore.image_path(), self._filename(image_id, obj.image.ext)))

    @staticmethod
    def _stage(upload: str, workdir: str) -> str:
        """Copy the upload into workdir under the suffix its bytes call for (nibabel reads by suffix)."""
        staged = os.path.join(workdir, "upload" + nifti_suffix(upload))
        shutil.copyfile(upload, staged)
        return staged

    def _commit(self, staged: str, folder: str, name: str, old_name: Optional[str]) -> None:
        """Move the validated file into folder/name atomically; drop the old file if its name differs."""
        os.makedirs(folder, exist_ok=True)
        dest = os.path.join(folder, name)
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")  # not listed: does not end in .nii(.gz)
        try:
            shutil.copyfile(staged, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            fsync_dir(folder)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if old_name and old_name != name:
            old = os.path.join(folder, old_name)
            if os.path.exists(old):
                os.unlink(old)

    def _label_shape(self, image_id: str, tag: str, label) -> tuple:
        path = os.path.join(self._datastore.label_path(tag), self._filename(image_id, label.ext))
        return tuple(nib.load(path).shape[:3])

    # ------------------------------------------------------------------ writes
    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        with http_errors():
            check_client_info(image_info)
        return self._add_image(image_id, image_filename, image_info)

    def _add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        """add_image with the server's own image info (SERVER_INFO) allowed."""
        with http_errors():
            if not image_id:  # the stock endpoint passes the upload's file name stem when no id is given
                image_id, _ = self._to_id(os.path.basename(image_filename))
            check_new_id(image_id)
            dwi = (image_info or {}).get("dwi")
            with tempfile.TemporaryDirectory(prefix="sparsesight-upload-") as work:
                staged = self._stage(image_filename, work)
                if dwi is not None:  # a 4D DWI with its protocol: stored with its sidecars
                    spatial, sidecars, dwi_info = self._check_dwi(image_id, staged, dwi, work)
                else:
                    image, _ = sio.load_image(staged, channels=CHANNELS, **self._limits)
                    spatial, sidecars, dwi_info = tuple(image.shape[1:]), {}, None
                ext = ".nii.gz" if staged.endswith(".nii.gz") else ".nii"
                name = self._filename(image_id, ext)

                with FileLock(self._lock_file):
                    old = self._datastore.objects.get(image_id)
                    labels = dict(old.labels) if old else {}
                    for tag, label in labels.items():
                        shape = self._label_shape(image_id, tag, label)
                        if shape != spatial:
                            raise refuse(
                                CONFLICT,
                                f"image {image_id!r} already has a {tag!r} label of shape {shape}, the new image is "
                                f"{spatial}: upload it under a new id, or DELETE /datastore/image?id={image_id} first",
                            )
                    old_name = self._filename(image_id, old.image.ext) if old else None
                    for suffix, path in sidecars.items():  # the protocol first: the image is listed once it lands
                        self._commit(path, self._datastore.image_path(), f"{image_id}{suffix}", None)
                    self._commit(staged, self._datastore.image_path(), name, old_name)

                    info = dict(image_info or {})
                    info.update({"ts": int(time.time()), "name": name, "shape": list(spatial), "channels": CHANNELS})
                    if dwi_info is not None:
                        info.update({"dwi": dwi_info, "channels": dwi_info["volumes"]})
                    self._datastore.objects[image_id] = ImageLabelModel(
                        image=DataModel(info=info, ext=ext), labels=labels
                    )
                    self._update_datastore_file(lock=False)
        logger.info(f"Added image {image_id} ({name}, spatial shape {spatial})")
        return image_id

    DWI_SIDECARS = (".bval", ".bvec", ".json")

    def _check_dwi(self, image_id: str, staged: str, dwi, work: str):
        """A DWI upload (params {"dwi": {bvals, bvecs | grad, big_delta, small_delta, ...}}): the image within the
        server's limits, 4D, one protocol entry per volume, timing given (sparsesight.data.diffusion
        .protocol_files.check_dwi_upload); its sidecars <id>.bval/.bvec/.json staged in `work`. 422 otherwise."""
        from sparsesight.data.diffusion import protocol_files, radius_sensitivity

        index = os.path.realpath(self._datastore_config_path)
        if os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.json")) == index:
            raise refuse(UNPROCESSABLE, f"image id {image_id!r} is reserved: its JSON sidecar would be the "
                                        f"datastore's index; choose another id")
        spatial, protocol, nonfinite = protocol_files.check_dwi_upload(staged, dwi, **self._limits)
        paths = protocol_files.write_protocol(protocol, os.path.join(work, "protocol"))
        radius = radius_sensitivity(protocol)
        info = {"volumes": protocol.m, "protocol_hash": protocol.hash, "shells": protocol.shell_table(),
                "units": protocol.source, "nonfinite_voxels": nonfinite,
                "radius": {k: radius[k] for k in ("r_min_um", "resolvable", "reason")}}
        return spatial, {f".{k}": str(v) for k, v in paths.items()}, info

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        with http_errors():
            obj = self._object(image_id)
            check_new_id(label_tag, "label tag")
            image_file = self._image_file(image_id, obj)
            try:
                header = nib.load(image_file)
            except Exception as e:  # a file placed in the folder by hand
                raise refuse(CONFLICT, f"the stored image {image_id!r} cannot be read ({e}); replace it first") from e
            spatial = tuple(header.shape[:3])
            with tempfile.TemporaryDirectory(prefix="sparsesight-upload-") as work:
                staged = self._stage(label_filename, work)
                _, affine = sio.load_label(staged, spatial_shape=spatial, **self._limits)
                if not np.allclose(np.asarray(affine, float), header.affine, atol=1e-2):
                    raise refuse(
                        UNPROCESSABLE,
                        f"the label's affine (voxel-to-world matrix) differs from image {image_id!r}'s: save the "
                        f"label on the image's grid (same origin, spacing and orientation)",
                    )
                ext = ".nii.gz" if staged.endswith(".nii.gz") else ".nii"
                name = self._filename(image_id, ext)

                with FileLock(self._lock_file):
                    old = obj.labels.get(label_tag)
                    old_name = self._filename(image_id, old.ext) if old else None
                    self._commit(staged, self._datastore.label_path(label_tag), name, old_name)
                    info = dict(label_info or {})
                    info.update({"ts": int(time.time()), "name": name})
                    obj.labels[label_tag] = DataModel(info=info, ext=ext)
                    self._update_datastore_file(lock=False)
        logger.info(f"Saved {label_tag} label for {image_id} ({name})")
        return image_id

    # ------------------------------------------------------------------ lookups that answer 404, not 500
    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        if image_id is None:  # the active-learning endpoint asks for the info of "no image" (nothing left)
            return {}
        self._object(image_id)
        info = super().get_image_info(image_id)
        if info.get("path"):  # the stock info holds the absolute server path: answer it relative to the datastore
            info["path"] = os.path.relpath(info["path"], os.path.realpath(self._datastore_path))
        return info

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        with http_errors():
            check_client_info(info)
        self._object(image_id)
        return super().update_image_info(image_id, info)

    def remove_image(self, image_id: str) -> None:
        obj = self._object(image_id)
        dwi = "dwi" in (obj.image.info or {})
        super().remove_image(image_id)
        if dwi:  # the protocol sidecars a DWI upload stored with it
            for suffix in self.DWI_SIDECARS:
                path = os.path.join(self._datastore.image_path(), f"{image_id}{suffix}")
                if os.path.isfile(path):
                    os.unlink(path)
        self._reconcile_now()

    def _reconcile_datastore(self):
        """The stock reconcile (index <- files on disk), serialised: the watcher and a delete may call it at once."""
        with self._reconcile_lock:
            return super()._reconcile_datastore()

    def _reconcile_now(self) -> None:
        """With auto-reload the stock delete leaves the index to the file watcher, so a listing right after a
        200 could still hold what was deleted (seen under load): reconcile at once, as the watcher would (its
        index write takes the index lock itself). An upload changing the index during the walk (the stock
        reconcile iterates it unguarded) is retried, never turned into a 500."""
        if not self._auto_reload:
            return
        for attempt in range(3):
            try:
                self._reconcile_datastore()
                return
            except RuntimeError as e:  # "dictionary changed size during iteration"
                logger.warning("datastore reconcile retried after a concurrent change (%s)", e)
                time.sleep(0.05 * (attempt + 1))

    def _label(self, label_id: str, label_tag: str):
        check_id(label_id)
        check_id(label_tag, "label tag")
        label = self._datastore.label(label_id, label_tag)
        if label is None:
            raise refuse(NOT_FOUND, f"image {label_id!r} has no {label_tag!r} label")
        return label

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        self._label(label_id, label_tag)
        return super().get_label_info(label_id, label_tag)

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        self._label(label_id, label_tag)
        return super().update_label_info(label_id, label_tag, info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        self._label(label_id, label_tag)
        super().remove_label(label_id, label_tag)
        self._reconcile_now()

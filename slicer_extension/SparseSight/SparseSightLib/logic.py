"""The module's logic without Qt: server round trips and scene building (the Widget only wires it to the .ui).

    logic = SparseSightLogicCore(scene)           # slicer.mrmlScene in Slicer, scene.new_scene() elsewhere
    logic.connect("http://127.0.0.1:8000")        # -> /info
    channels = logic.load_image("case_001")       # the datastore image, one volume per channel
    run = logic.infer("mlcsc", "case_001", outputs=["label", "components:T1ce", "params"])
    logic.submit_label(run.nodes["label"], "case_001")   # after editing it in the Segment Editor
    logic.train("mlcsc", epochs=2); logic.training()     # -> state, epochs done / planned

Errors meant for the user are ServerError (the server's reason) and SceneError; `message(exc)` words any
exception for a message box.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import scene as S
from .client import FINAL, ServerError, SparseSightClient, train_progress

#: channel names of the 4D images (docs/ARCHITECTURE.md, data conventions); bundles may name them in "modalities"
MODALITIES = ("FLAIR", "T1", "T1ce", "T2")
#: the BraTS regions an attribution can target when a model has the three tumour classes (the server's REGIONS)
BRATS_REGIONS = ("WT", "TC", "ET")
BRATS_CLASSES = ("oedema", "non-enhancing core", "enhancing")

#: output groups offered in the module, as the request's output names of the segmentation models
OUTPUT_GROUPS = {
    "segmentation": ["label"],
    "probabilities": ["probabilities"],
    "components": ["components"],
    "reconstruction": ["reconstruction", "residual"],
    "parameters": ["params", "params_plot", "sparsity"],
}


def message(exc: BaseException) -> str:
    """What to tell the user about `exc`: the reason for errors we expect, type and text otherwise."""
    if isinstance(exc, (ServerError, S.SceneError)):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc}"


@dataclass
class TrainingState:
    state: str  # "" (never trained), SUBMITTED, RUNNING, DONE, ERROR, STOPPED
    done: int  # epochs finished
    total: int  # epochs planned (0 until the first epoch line)
    details: list

    @property
    def running(self) -> bool:
        return self.state in ("SUBMITTED", "RUNNING")

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


class SparseSightLogicCore:
    def __init__(self, scene, url: str | None = None, workdir=None):
        self.scene = scene
        self.client = SparseSightClient(url) if url else None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sparsesight-slicer-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.info: dict = {}

    # ------------------------------------------------------------------ server
    def connect(self, url: str, token: str | None = None) -> dict:
        self.client = SparseSightClient(url, token=token)
        self.info = self.client.info()
        return self.info

    def _server(self) -> SparseSightClient:
        if self.client is None:
            raise ServerError("not connected: enter the server URL and press Connect")
        return self.client

    def models(self) -> list[str]:
        return sorted((self.info or self.connect(self._server().url)).get("models", {}))

    def strategies(self) -> list[str]:
        return sorted((self.info or self.connect(self._server().url)).get("strategies", {}))

    def is_segmentation(self, model: str) -> bool:
        """Whether `model` segments (its outputs are chosen by OUTPUT_GROUPS); other models return everything."""
        return self.info.get("models", {}).get(model, {}).get("type") == "segmentation"

    def classes(self, model: str) -> dict:
        """{class value: name} of `model` from /info (its labels: {name: value})."""
        labels = self.info.get("models", {}).get(model, {}).get("labels") or self.info.get("labels") or {}
        if isinstance(labels, dict):
            return {int(v): k for k, v in labels.items()}
        return {i + 1: name for i, name in enumerate(labels)}

    def attribution_targets(self, model: str) -> list[str]:
        """What an attribution map of `model` can explain: its classes, and the BraTS regions WT, TC, ET when it
        has the three tumour classes."""
        names = list(self.classes(model).values())
        return names + (list(BRATS_REGIONS) if set(BRATS_CLASSES) <= set(names) else [])

    @staticmethod
    def attribution_options(method: str, target: str, point=None) -> dict:
        """The infer options of one attribution map of `target`: over the voxels labelled so, or at the world point
        `point` (RAS mm, e.g. the crosshair's), which the server places on the grid the model saw."""
        options = {"attribution": method, "attribution_target": target}
        if point is not None:
            options["attribution_point"] = ",".join(f"{float(v):.3f}" for v in point)
        return options

    # ------------------------------------------------------------------ images
    def load_image(self, image_id: str, channel_names=MODALITIES) -> list:
        """Download datastore image `image_id` and add one scalar volume per channel under its folder."""
        path = self._server().download_image(image_id, self.workdir / f"{image_id}.nii.gz")
        try:
            nodes = S.read_image(self.scene, path, image_id, channel_names)
        finally:
            path.unlink(missing_ok=True)
        case = S.folder(self.scene, image_id)
        for node in nodes:
            S.place(self.scene, node, case)
        return nodes

    def next_sample(self, strategy: str = "random", load: bool = True):
        """(image id or None, channel nodes or []) of the image the strategy suggests annotating next."""
        answer = self._server().next_sample(strategy)
        image_id = answer.get("id")
        if not image_id:
            return None, []
        return image_id, (self.load_image(image_id) if load else [])

    def upload_image(self, channels: list, image_id: str) -> dict:
        """Send channel volumes (FLAIR, T1, T1ce, T2 order) as one 4D NIfTI image `image_id` to the datastore."""
        path = S.write_image(self.scene, channels, self.workdir / f"upload-{image_id}.nii.gz")
        try:
            return self._server().upload_image(path, image_id)
        finally:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ inference
    def infer(self, model: str, image_id: str, outputs=None, progress=None, **options) -> S.Inference:
        """Run `model` on `image_id` with the chosen outputs (None: all) and add the result bundle to the scene,
        in a new folder of this run (so runs and models can be compared side by side)."""
        path = self._server().infer_bundle(model, image_id, self.workdir / f"{model}-{image_id}.zip",
                                           outputs=outputs, **options)
        try:
            return S.load_bundle(self.scene, path, progress=progress)
        finally:
            path.unlink(missing_ok=True)

    def infer_label(self, model: str, image_id: str):
        """The plain label of `model` (the stock MONAI Label answer) as a segmentation with the model's classes."""
        path = self._server().infer_label(model, image_id, self.workdir / f"{model}-{image_id}-label.nii.gz")
        try:
            entry = {"name": "label", "kind": "labelmap", "classes": {str(k): v for k, v in self.classes(model).items()}}
            node = S.add_labelmap(self.scene, path, f"{model}: label", entry)
        finally:
            path.unlink(missing_ok=True)
        S.place(self.scene, node, S.folder(self.scene, image_id))
        return node

    @staticmethod
    def output_names(segmentation=True, probabilities=False, components=False, reconstruction=False,
                     parameters=False, component_modalities=()) -> list[str]:
        """Request output names for the output groups ticked in the module."""
        names = []
        for group, on in (("segmentation", segmentation), ("probabilities", probabilities),
                          ("components", components and not component_modalities),
                          ("reconstruction", reconstruction), ("parameters", parameters)):
            if on:
                names += OUTPUT_GROUPS[group]
        if components and component_modalities:
            names += [f"components:{m}" for m in component_modalities]
        return names

    # ------------------------------------------------------------------ annotation
    def submit_label(self, segmentation_node, image_id: str, tag: str = FINAL, reference_volume=None) -> dict:
        """Send the (edited) segmentation to the datastore as the label of `image_id`."""
        path = self.workdir / f"label-{image_id}.nii.gz"
        S.export_label(self.scene, segmentation_node, path, reference_volume)
        try:
            return self._server().save_label(image_id, path, tag)
        finally:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ training
    def train(self, model: str, **params) -> dict:
        return self._server().train_start(model, **params)

    def stop_training(self) -> dict:
        return self._server().train_stop()

    def training(self) -> TrainingState:
        status = self._server().train_status()
        done, total = train_progress(status)
        return TrainingState(status.get("status", ""), done, total, list(status.get("details") or []))

    def wait_training(self, timeout: float = 600, poll: float = 1.0, on_progress=None) -> TrainingState:
        """Poll the training status until it ends; `on_progress(TrainingState)` after each poll."""
        deadline = time.time() + timeout
        while True:
            state = self.training()
            if on_progress:
                on_progress(state)
            if not state.running:
                return state
            if time.time() > deadline:
                raise ServerError(f"training still {state.state} after {timeout:.0f} s")
            time.sleep(poll)

    def cleanup(self):
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __del__(self):  # the work folder holds only transient downloads
        if os.path.isdir(getattr(self, "workdir", "")):
            shutil.rmtree(self.workdir, ignore_errors=True)

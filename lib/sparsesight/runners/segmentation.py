"""Segmentation inference shared by the segmentation runners (mlcsc, sum) and the benchmarks' baselines:
normalisation as in training, sliding-window prediction, the label and probability volumes of a bundle."""
from __future__ import annotations

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from .. import CLASSES, MODALITIES
from ..bundle import BundleWriter
from ..data.io import load_image
from ..errors import InvalidInput
from ..transforms import intensity_normalisation


def normalise(image: np.ndarray) -> torch.Tensor:
    """(C, X, Y, Z) array -> normalised (1, C, X, Y, Z) tensor, as in training."""
    # torch.tensor copies: MONAI normalises in place, and the caller's array must stay as it was
    out = intensity_normalisation()({"image": torch.tensor(image, dtype=torch.float32)})["image"]
    return torch.as_tensor(out).unsqueeze(0)


def _roi(model) -> list[int]:
    """The model's sliding-window size (smaller images are padded up to it by the inferer)."""
    cfg = getattr(model, "config", None)
    return list(cfg["roi_size"]) if isinstance(cfg, dict) and "roi_size" in cfg else [96, 96, 96]


@torch.no_grad()
def predict_logits(model, image: np.ndarray, device="cpu", roi_size=None, overlap: float = 0.25) -> torch.Tensor:
    """Sliding-window logits (1, K, X, Y, Z) of a normalised-on-the-fly (C, X, Y, Z) image."""
    device = torch.device(device)
    x = normalise(image).to(device)
    model = model.to(device).eval()
    inferer = SlidingWindowInferer(roi_size=roi_size or _roi(model), sw_batch_size=1,
                                   overlap=overlap, mode="gaussian", padding_mode="constant")
    return inferer(x, model).cpu()


def predict(model, image: np.ndarray, device="cpu", roi_size=None) -> np.ndarray:
    """(C, X, Y, Z) image -> label map (X, Y, Z) uint8 (argmax of the softmax)."""
    if image.ndim != 4:
        raise InvalidInput(f"expected a (C, X, Y, Z) image; got shape {image.shape}")
    return predict_logits(model, image, device, roi_size)[0].argmax(0).numpy().astype(np.uint8)


def predict_file(model, image_path, device="cpu", **options) -> tuple[np.ndarray, np.ndarray]:
    """Label map (X, Y, Z) uint8 and affine of the 4-channel image file `image_path` (the infer task's default);
    an attribution map instead when `options` ask for one (explain.served: attribution=..., attribution_nifti)."""
    image, affine = load_image(image_path, channels=getattr(model, "n", len(MODALITIES)))
    from ..explain.served import nifti_map
    amap = nifti_map(model.to(device), normalise(image).to(device), options)
    return (amap if amap is not None else predict(model, image, device)), affine


def add_label(w: BundleWriter, label: np.ndarray) -> dict:
    """The label map (X, Y, Z) as the bundle's "label" labelmap with the tumour class names."""
    return w.add_volume("label", label, kind="labelmap", classes={k: v for k, v in CLASSES.items() if k})


def add_probabilities(w: BundleWriter, probabilities: np.ndarray, **meta) -> None:
    """One "probability/<class>" volume per tumour class from (K, X, Y, Z) scores in [0, 1]."""
    for c in range(1, len(CLASSES)):
        w.add_volume(f"probability/{CLASSES[c]}", probabilities[c], colormap="probability", range=[0.0, 1.0],
                     dtype=np.int16, **meta)

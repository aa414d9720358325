"""Random active learning without the stock strategy's failure modes.

The stock Random weights each unlabelled image by the seconds since it was last handed out; when the only
image left was handed out within the same second every weight is 0 and `random.choices` raises, which the
server answers with a 500. Here every image keeps a weight of at least 1, and when nothing is left the answer
says so instead of being empty.
"""
from __future__ import annotations

import logging
import random
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

logger = logging.getLogger(__name__)


def unlabelled(request, datastore: Datastore) -> list:
    """The images without a label of the request's tag (default: final), in the datastore's order."""
    return datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))


def nothing_left(datastore: Datastore) -> dict:
    """The answer when no image is left to annotate: id None and why."""
    total = len(datastore.list_images())
    return {
        "id": None,
        "message": f"no unlabelled image left: all {total} images have a final label"
        if total
        else "the datastore has no images: PUT /datastore/image?image=ID with a 4-channel NIfTI first",
    }


class Random(Strategy):
    def __init__(self):
        super().__init__("Random unlabelled image (least recently handed out first)")

    def __call__(self, request, datastore: Datastore):
        images = unlabelled(request, datastore)
        if not images:
            return nothing_left(datastore)
        strategy = request.get("strategy", "random")
        now = int(time.time())
        weights = [
            max(1, now - datastore.get_image_info(i).get("strategy", {}).get(strategy, {}).get("ts", 0)) for i in images
        ]
        image = random.choices(images, weights=weights)[0]
        logger.info(f"Random: selected {image} of {len(images)} unlabelled images")
        return {"id": image, "weight": weights[images.index(image)], "unlabeled": len(images)}

"""REST client of the SparseSight MONAI Label server (no Qt, no slicer: usable from any Python).

Every call either returns the server's answer or raises `ServerError`, whose message is the server's own reason
(the `detail` of its 4xx/5xx answer, or why the server could not be reached) -- never a stack trace, so the
module can show it to the user as it is.

Endpoints (MONAI Label's, with SparseSight's additions):
    GET  /info/                              models, trainers, strategies, labels, model versions
    GET  /datastore/?output=all              images and their labels
    GET  /datastore/image?image=ID           download an image
    GET  /datastore/label?label=ID&tag=T     download a stored label
    PUT  /datastore/image?image=ID           upload an image (multipart field `file`)
    PUT  /datastore/label?image=ID&tag=T     save a label (multipart field `label`)
    POST /activelearning/{strategy}          next image to annotate
    POST /infer/{model}?image=ID&output=image   plain label NIfTI, or the result-bundle zip with {"bundle": true}
    POST /train/{model}, GET /train/, DELETE /train/   start, status, stop training
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import requests

#: the tag of a finished (ground-truth) label in MONAI Label's datastore
FINAL = "final"



def save_nifti(content: bytes, path) -> Path:
    """Write NIfTI bytes to `path` with the suffix their content has: .nii.gz when gzip-compressed, else .nii.
    The datastore serves a file as it was stored, and an upload stored uncompressed is read back as .nii (a
    .nii.gz name on it made every reader fail: "not a gzip file")."""
    path = Path(path)
    name = path.name
    stem = name[:-7] if name.endswith(".nii.gz") else name[:-4] if name.endswith(".nii") else name
    path = path.with_name(stem + (".nii.gz" if content[:2] == b"\x1f\x8b" else ".nii"))
    path.write_bytes(content)
    return path

class ServerError(Exception):
    """A request the server refused or could not answer. `reason` is the server's own words."""

    def __init__(self, reason: str, status: int | None = None, endpoint: str = ""):
        super().__init__(reason)
        self.reason, self.status, self.endpoint = reason, status, endpoint

    def __str__(self):
        where = f"{self.endpoint}: " if self.endpoint else ""
        code = f" (HTTP {self.status})" if self.status else ""
        return f"{where}{self.reason}{code}"


def _reason(response: requests.Response) -> str:
    """The server's reason of a refusal: FastAPI's `detail` (a string or a list of field errors), else the text."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:500] if text else response.reason or "no reason given"
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI validation errors: [{"loc": [...], "msg": "..."}]
        return "; ".join(f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg')}" if isinstance(d, dict)
                         else str(d) for d in detail)
    return detail if isinstance(detail, str) else json.dumps(detail)


_EPOCH = re.compile(r"epoch (\d+)/(\d+)")


def train_progress(status: dict) -> tuple[int, int]:
    """(epochs done, epochs planned) from a GET /train/ status: the trainer prints 'epoch k/N' once per epoch.
    (0, 0) when no epoch line is there yet."""
    done, total = 0, 0
    for line in status.get("details") or []:
        m = _EPOCH.search(str(line))
        if m:
            done, total = int(m.group(1)), int(m.group(2))
    if status.get("status") == "DONE" and total:
        done = total
    return done, total


class SparseSightClient:
    """`SparseSightClient("http://127.0.0.1:8000")`: one method per server task."""

    def __init__(self, url: str, timeout: float = 600.0, token: str | None = None):
        """`token`: the server's API token (its --conf api_token), else $SPARSESIGHT_API_TOKEN, else none."""
        self.url = url.strip().rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        token = token if token is not None else os.environ.get("SPARSESIGHT_API_TOKEN", "").strip()
        if token:
            self.session.headers["X-API-Key"] = token

    # ------------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, ok=(200,), **kw) -> requests.Response:
        kw.setdefault("timeout", self.timeout)
        endpoint = f"{method} {path}"
        try:
            r = self.session.request(method, self.url + path, **kw)
        except requests.exceptions.ConnectionError:
            raise ServerError(f"cannot reach the SparseSight server at {self.url}; is it running "
                              f"(monailabel start_server --app apps/sparsesight ...)?", None, endpoint) from None
        except requests.exceptions.Timeout:
            raise ServerError(f"the server at {self.url} did not answer within {kw['timeout']:.0f} s",
                              None, endpoint) from None
        except requests.exceptions.RequestException as e:  # bad URL and the like
            raise ServerError(f"request to {self.url} failed: {e}", None, endpoint) from None
        if r.status_code not in ok:
            raise ServerError(_reason(r), r.status_code, endpoint)
        return r

    def _json(self, method: str, path: str, **kw):
        r = self._request(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise ServerError(f"expected JSON, got {r.headers.get('content-type')}", r.status_code,
                              f"{method} {path}") from None

    # ------------------------------------------------------------------ server and datastore
    def info(self) -> dict:
        return self._json("GET", "/info/")

    def models(self) -> list[str]:
        return sorted(self.info().get("models", {}))

    def datastore(self) -> dict:
        """{image id: {"image": {...}, "labels": {tag: {...}}}} of every image in the datastore."""
        return self._json("GET", "/datastore/", params={"output": "all"}).get("objects", {})

    def labelled(self, tag: str = FINAL) -> list[str]:
        return sorted(k for k, v in self.datastore().items() if tag in v.get("labels", {}))

    def download_image(self, image_id: str, path) -> Path:
        """Save datastore image `image_id` as `path`, its suffix that of what the server sent (save_nifti), and
        return where it went."""
        r = self._request("GET", "/datastore/image", params={"image": image_id})
        return save_nifti(r.content, path)

    def download_label(self, image_id: str, path, tag: str = FINAL) -> Path:
        """Save the stored label `tag` of `image_id` as `path` (suffix as save_nifti) and return where it went."""
        r = self._request("GET", "/datastore/label", params={"label": image_id, "tag": tag})
        return save_nifti(r.content, path)

    def upload_image(self, path, image_id: str) -> dict:
        """Add (or replace) image `image_id` in the datastore from the NIfTI file `path`."""
        with open(path, "rb") as f:
            return self._json("PUT", "/datastore/image", params={"image": image_id},
                              files={"file": (os.path.basename(str(path)), f)})

    def save_label(self, image_id: str, path, tag: str = FINAL) -> dict:
        """Store the label NIfTI `path` for `image_id` (tag `final`: a finished annotation used for training)."""
        with open(path, "rb") as f:
            return self._json("PUT", "/datastore/label", params={"image": image_id, "tag": tag},
                              files={"label": (os.path.basename(str(path)), f)})

    def next_sample(self, strategy: str = "random", **params) -> dict:
        """{"id": image id or None, ...} of the image the active-learning `strategy` suggests annotating next."""
        return self._json("POST", f"/activelearning/{strategy}", json=params)

    # ------------------------------------------------------------------ inference
    def infer_label(self, model: str, image_id: str, path, **options) -> Path:
        """The plain label NIfTI of `model` on datastore image `image_id`, saved to `path`."""
        r = self._request("POST", f"/infer/{model}", params={"image": image_id, "output": "image"},
                          data={"params": json.dumps(options)})
        path = Path(path)
        path.write_bytes(r.content)
        return path

    def infer_bundle(self, model: str, image_id: str, path, outputs: list[str] | None = None, **options) -> Path:
        """The result bundle (zip) of `model` on `image_id` with the chosen `outputs` (None: all), saved to `path`.
        `options` are the model's own infer options (see /info: models.<name>.config)."""
        params = {"bundle": True, **options}
        if outputs:
            params["outputs"] = list(outputs)
        r = self._request("POST", f"/infer/{model}", params={"image": image_id, "output": "image"},
                          data={"params": json.dumps(params)})
        if not r.content.startswith(b"PK"):
            raise ServerError("the server answered something that is not a result bundle (zip)", r.status_code,
                              f"POST /infer/{model}")
        path = Path(path)
        path.write_bytes(r.content)
        return path

    # ------------------------------------------------------------------ training
    def train_start(self, model: str, **params) -> dict:
        """Start training `model` on the datastore's final labels; params e.g. epochs=2. Returns the task."""
        return self._json("POST", f"/train/{model}", json=params)

    def train_stop(self) -> dict:
        return self._json("DELETE", "/train/")

    def train_status(self) -> dict:
        """The latest training task: {"id", "status": SUBMITTED|RUNNING|DONE|ERROR|STOPPED, "details": [...]};
        {} when nothing was ever trained on this server."""
        try:
            return self._json("GET", "/train/")
        except ServerError as e:
            if e.status == 404:
                return {}
            raise

    def is_training(self) -> bool:
        r = self._request("GET", "/train/", ok=(200, 404), params={"check_if_running": "true"})
        return r.status_code == 200

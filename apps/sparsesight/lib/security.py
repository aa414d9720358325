"""The server's security settings: who may do what, and how big an input may be.

One frozen `Settings` built once from the app's `--conf` options, falling back to environment variables
(SPARSESIGHT_<NAME upper-cased>), falling back to the defaults below. Every guard (the ASGI guard, the
pre-flight routes, the datastore, the model file, the trainers) reads its limits from here, so one table in the
README describes the whole security model.

conf / env                         default        meaning
api_token / SPARSESIGHT_API_TOKEN  (none)         when set: required (Authorization: Bearer TOKEN, or
                                                  X-API-Key: TOKEN) on every route but GET /info/, the API
                                                  docs and static files (guard.OPEN_GET): every PUT/POST/DELETE,
                                                  every read of images, labels, models, sessions, logs, listings
cors_origins                       (none)         comma-separated origins allowed cross-origin; never "*"
allow_model_upload                 false          PUT /model/{name}; needs api_token as well
max_upload_bytes                   256 MiB        an upload body (infer, datastore, model, session), as
                                                  sent, plus max_body_bytes for its form fields
max_decompressed_bytes             512 MiB        a .nii.gz once inflated (checked while streaming)
max_voxels                         128 Mi         product of the NIfTI header's dimensions (all channels)
max_body_bytes                     1 MiB          a JSON request body
max_epochs                         1000           epochs of one train request
infer_workers                      2              inferences that run at the same time (worker threads)
infer_queue                        8              inferences waiting beyond those; more -> 503 Retry-After
job_workers                        1              asynchronous jobs (POST /jobs/{model}) that run at the same time
max_jobs                           4              jobs queued or running; more -> 429 Retry-After
job_processes                      cores, <= 4    processes a job fits its voxel chunks in (1: in the server
                                                  process); one thread each, spawned per job
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Mapping, Optional

MiB = 1 << 20


def _bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@dataclass(frozen=True)
class Settings:
    api_token: Optional[str] = None
    cors_origins: tuple = field(default_factory=tuple)
    allow_model_upload: bool = False
    max_upload_bytes: int = 256 * MiB
    max_decompressed_bytes: int = 512 * MiB
    max_voxels: int = 128 * MiB
    max_body_bytes: int = 1 * MiB
    max_epochs: int = 1000
    infer_workers: int = 2
    infer_queue: int = 8
    job_workers: int = 1
    max_jobs: int = 4
    job_processes: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))

    @classmethod
    def from_conf(cls, conf: Optional[Mapping[str, str]] = None, env: Optional[Mapping[str, str]] = None) -> "Settings":
        """Settings from `--conf name value` options, else SPARSESIGHT_NAME environment variables, else defaults."""
        conf = conf or {}
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = conf.get(f.name)
            if raw is None:
                raw = env.get(f"SPARSESIGHT_{f.name.upper()}")
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                continue
            if f.name == "api_token":
                values[f.name] = str(raw).strip()
            elif f.name == "cors_origins":
                origins = tuple(o.strip().rstrip("/") for o in str(raw).split(",") if o.strip())
                if "*" in origins:
                    raise ValueError("cors_origins: '*' is not allowed; list the viewer origins, e.g. http://localhost:3000")
                values[f.name] = origins
            elif f.name == "allow_model_upload":
                values[f.name] = _bool(raw)
            else:
                try:
                    number = int(raw)
                except (TypeError, ValueError):
                    raise ValueError(f"{f.name}: {raw!r} is not a whole number") from None
                if number < 1:
                    raise ValueError(f"{f.name}: must be at least 1, got {number}")
                values[f.name] = number
        return cls(**values)

    def public(self) -> dict:
        """What /info may show: the limits, whether a token is required, never the token itself."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_token"}
        out["cors_origins"] = list(self.cors_origins)
        out["token_required"] = bool(self.api_token)
        return out


# ---------------------------------------------------------------- request options checked in the app layer
TRAIN_REQUEST_BYTES = 64 * 1024  # a train request travels as one argv string to the training process (<128 KiB)
# train_config integers any model may take: (lowest, highest)
TRAIN_INTEGERS = {"batch_size": (1, 4096), "samples_per_image": (1, 64), "iterations_per_epoch": (1, 1_000_000),
                  "steps_per_epoch": (1, 1_000_000), "num_workers": (0, 16), "seed": (0, 2**32 - 1),
                  "n_train": (1, 10_000_000)}
PATCH_SIDE = (8, 512)


def _whole(value, what: str, lo: int, hi: int, why: str = "") -> int:
    from .http_errors import BAD_REQUEST, refuse

    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise refuse(BAD_REQUEST, f"'{what}' must be a whole number between {lo} and {hi}{why}, got {value!r}")
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise refuse(BAD_REQUEST, f"'{what}' must be a whole number between {lo} and {hi}{why}, got {value!r}") from None
    if not lo <= number <= hi:
        raise refuse(BAD_REQUEST, f"'{what}' must be between {lo} and {hi}{why}, got {number}")
    return number


def check_train_request(params: dict, settings: Settings) -> None:
    """Size of a train request and the ranges of its integer options (HTTP 413 / 400 naming the range)."""
    import json

    from .http_errors import BAD_REQUEST, TOO_LARGE, refuse

    size = len(json.dumps(params, separators=(",", ":"), default=str))
    if size > TRAIN_REQUEST_BYTES:
        raise refuse(TOO_LARGE, f"the train request takes {size} bytes; at most {TRAIN_REQUEST_BYTES} (it is handed "
                                f"to the training process on its command line)")
    for key in ("epochs", "max_epochs"):
        if params.get(key) is not None:
            _whole(params[key], key, 1, settings.max_epochs, " (the server's max_epochs)")
    config = params.get("train_config")
    if not isinstance(config, dict):
        return
    for key, (lo, hi) in TRAIN_INTEGERS.items():
        if config.get(key) is not None:
            _whole(config[key], f"train_config.{key}", lo, hi)
    patch = config.get("patch_size")
    if patch is not None:
        sides = patch if isinstance(patch, list) else [patch]
        if not 1 <= len(sides) <= 3:
            raise refuse(BAD_REQUEST, f"'train_config.patch_size' must be 1 to 3 whole numbers, got {patch!r}")
        for side in sides:
            _whole(side, "train_config.patch_size", *PATCH_SIDE)


def check_infer_request(request: dict) -> None:
    """An infer request may save its result as a label, but never as the final (clinician's) label: 403."""
    from monailabel.interfaces.datastore import DefaultLabelTag

    from .http_errors import refuse

    save = request.get("save_label")
    if isinstance(save, str):
        save = _bool(save)
    tag = request.get("label_tag")
    if save and str(getattr(tag, "value", tag)) == DefaultLabelTag.FINAL.value:
        raise refuse(403, f"an infer request cannot overwrite the final label: save the result under another tag "
                          f"(e.g. label_tag \"{DefaultLabelTag.ORIGINAL.value}\") or with PUT /datastore/label")

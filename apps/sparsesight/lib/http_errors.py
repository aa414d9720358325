"""How the app's refusals become HTTP 4xx answers.

MONAI Label's endpoints call the app and the datastore synchronously inside the request and let every
exception through, which FastAPI turns into a bare 500 -- except `fastapi.HTTPException`, which it answers
with its status code and `{"detail": reason}`. So the app validates in its own layer (MyApp, the datastore
subclass, the infer task, the train pre-flight route) and raises HTTPException; `http_errors()` translates the
library's named errors on the way out.
"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import PurePosixPath, PureWindowsPath

from fastapi import HTTPException
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException

from sparsesight.errors import BundleError, InvalidInput, TooLarge, UnknownModel
from sparsesight.options import flag  # noqa: F401 (the app's one reading of a boolean option)

BAD_REQUEST = 400
NOT_FOUND = 404
CONFLICT = 409  # the request is fine but the server is not ready for it (no checkpoint, no final labels)
UNSUPPORTED_MEDIA = 415
UNPROCESSABLE = 422  # the uploaded content cannot be used (not an image, NaN voxels, wrong shape, ...)
TOO_LARGE = 413  # over a configured size limit (security.Settings)

# ids the app creates: a file-name stem without any path meaning
_NEW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def refuse(status: int, reason: str) -> HTTPException:
    return HTTPException(status_code=status, detail=reason)


@contextmanager
def http_errors():
    """Re-raise the library's and MONAI Label's expected errors as HTTP 4xx with their message."""
    try:
        yield
    except HTTPException:
        raise
    except TooLarge as e:
        raise refuse(TOO_LARGE, str(e)) from e
    except InvalidInput as e:
        raise refuse(UNPROCESSABLE, str(e)) from e
    except UnknownModel as e:
        raise refuse(NOT_FOUND, str(e)) from e
    except BundleError as e:
        raise refuse(BAD_REQUEST, str(e)) from e
    except (ImageNotFoundException, LabelNotFoundException) as e:
        raise refuse(NOT_FOUND, e.msg) from e


@contextmanager
def bad_request():
    """InvalidInput raised while reading the request's own image, k-space, gradient table or options: HTTP 400."""
    try:
        yield
    except TooLarge as e:
        raise refuse(TOO_LARGE, str(e)) from None
    except InvalidInput as e:
        raise refuse(BAD_REQUEST, str(e)) from None


class RequestRunner:
    """A library runner (predict_file / run_bundle, see infers/sparsesight_infer.py) whose refusals are about the
    request and so answered 400 (for models whose inputs are the request's own data: cdl, microstructure)."""

    def __init__(self, module):
        self.module = module

    def predict_file(self, *args, **kw):
        with bad_request():
            return self.module.predict_file(*args, **kw)

    def run_bundle(self, *args, **kw):
        with bad_request():
            return self.module.run_bundle(*args, **kw)


def check_id(value, what: str = "image id") -> str:
    """Refuse ids that could name a path outside the datastore: empty, absolute, with a separator or '..'."""
    if not isinstance(value, str) or not value.strip():
        raise refuse(BAD_REQUEST, f"empty {what}: give the {what} as listed by GET /datastore/?output=all")
    if "\x00" in value:
        raise refuse(BAD_REQUEST, f"{what} {value!r} contains a NUL character")
    if (
        "/" in value
        or "\\" in value
        or PurePosixPath(value).is_absolute()
        or PureWindowsPath(value).is_absolute()
        or PureWindowsPath(value).drive
    ):
        raise refuse(
            BAD_REQUEST,
            f"{what} {value!r} contains a path separator or is an absolute path; an id is a plain name such as "
            f"'case_003' (the file name without .nii.gz)",
        )
    if ".." in value:
        raise refuse(BAD_REQUEST, f"{what} {value!r} contains '..'; an id is a plain name such as 'case_003'")
    return value


def check_new_id(value, what: str = "image id") -> str:
    """An id the datastore will create a file for: also restricted to letters, digits, '.', '_' and '-'."""
    check_id(value, what)
    if not _NEW_ID.match(value):
        raise refuse(
            BAD_REQUEST,
            f"{what} {value!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit",
        )
    return value


def is_stock_upload(path) -> bool:
    """True for the temporary file a stock endpoint wrote an upload to (tempfile.NamedTemporaryFile().name)."""
    if not isinstance(path, str) or not os.path.isabs(path) or not os.path.isfile(path):
        return False
    real = os.path.realpath(path)
    return os.path.dirname(real) == os.path.realpath(tempfile.gettempdir()) and os.path.basename(real).startswith("tmp")

"""Issue 18, part B: inputs bounded before allocation, request bodies bounded, request options range-checked.

Every refusal is a 4xx (or 507 for an allocation the machine cannot make) with a reason naming the limit, and
leaves the datastore and the server's temp folder as they were.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests
from hostile_inputs import (
    TOKEN,
    MiB,
    gzip_bomb,
    header_only,
    nifti_bytes,
    raw_request,
    small_image,
    zero_spacing,
)

from sparsesight.bench.server_probes import BOMB_ROUTES, bomb_upload

pytestmark = pytest.mark.server


def stray_files(srv, wait=3.0) -> list:
    deadline = time.time() + wait
    while True:
        left = sorted(p.name for p in srv.tmpdir.iterdir() if p.is_file() and p.name not in srv.tmp_baseline)
        if not left or time.time() > deadline:
            return left
        time.sleep(0.2)


ROUTES = {
    "image upload": lambda s, body: s.put("/datastore/image", params={"image": "hostile"},
                                          files={"file": ("x.nii.gz", body)}),
    "label upload": lambda s, body: s.put("/datastore/label", params={"image": "case_001", "tag": "final"},
                                          files={"label": ("x.nii.gz", body)}),
    "infer upload": lambda s, body: s.post("/infer/mlcsc", params={"output": "image"},
                                           files={"file": ("x.nii.gz", body)}),
}
BODIES = {
    "2048^3 float32 header (.nii.gz)": (lambda: header_only((2048, 2048, 2048)), 413, "max_voxels"),
    "2048^3 float32 header (.nii)": (lambda: header_only((2048, 2048, 2048), gz=False), 413, "max_voxels"),
    "800 MB of float64 under max_voxels": (lambda: header_only((512, 512, 100, 4), np.float64), 413,
                                           "max_decompressed_bytes"),
    "zero voxel spacing": (zero_spacing, 422, "spacing"),
    "complex voxels": (lambda: nifti_bytes(small_image(np.complex64)), 422, "complex"),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("body", BODIES)
def test_hostile_nifti_refused_before_allocation(server, route, body):
    make, status, reason = BODIES[body]
    before = server.files()
    r = ROUTES[route](server, make())
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]
    assert server.files() == before
    assert stray_files(server) == []


def test_gzip_bomb_refused_with_bounded_memory(server):
    """1 MiB of gzip that inflates to 1 GiB: 413 naming the limit, the server's peak RSS barely moves (the same
    measurement as `python -m sparsesight.bench.reliability`, which records the figures)."""
    bomb = gzip_bomb(1 << 30)
    assert len(bomb) < 2 * MiB
    limit_mib = server.info()["security"]["max_decompressed_bytes"] / MiB
    before = server.files()
    for route in BOMB_ROUTES:
        m = bomb_upload(server.url, server.process.proc.pid, bomb, route)
        print(f"\nbomb via {route}: {m['status']} in {m['seconds']:.1f} s; server RSS before "
              f"{m['rss_before_mib']:.0f} MiB, peak {m['peak_rss_mib']:.0f} MiB (+{m['peak_over_before_mib']:.0f}); "
              f"max_decompressed_bytes {limit_mib:.0f} MiB, aim: peak <= limit + 200 = {limit_mib + 200:.0f} MiB")
        assert m["status"] == 413, m
        assert "max_decompressed_bytes" in m["detail"]
        assert m["peak_rss_mib"] <= limit_mib + 200
        assert m["peak_over_before_mib"] <= 200  # inflated in bounded steps, never held whole
    assert server.files() == before
    assert stray_files(server) == []


def test_allocation_failure_is_507_not_500(guarded):
    """With the size caps off, a header claiming 32767^3 x 4 float64 reaches an allocation that fails: 507."""
    before = guarded.files()
    r = guarded.put("/datastore/image", params={"image": "huge"}, headers={"X-API-Key": TOKEN},
                    files={"file": ("huge.nii.gz", header_only((32767, 32767, 32767, 4), np.float64))})
    assert r.status_code == 507, r.text
    assert "memory" in r.json()["detail"]
    assert guarded.files() == before
    assert stray_files(guarded) == []
    assert guarded.get("/info/").status_code == 200


# ---------------------------------------------------------------------------------------------- request bodies
@pytest.mark.parametrize("path,limit", [("/train/mlcsc", "max_body_bytes"), ("/datastore/image", "max_upload_bytes")])
def test_content_length_over_limit_refused_before_the_body(server, path, limit):
    method = "PUT" if path.startswith("/datastore") else "POST"
    start = time.time()
    status, answer = raw_request(server.url, f"{method} {path} HTTP/1.1\r\nHost: test\r\n"
                                             f"Content-Type: application/json\r\nContent-Length: {10 ** 12}")
    assert status == 413, answer
    assert limit.encode() in answer
    assert time.time() - start < 5  # answered without waiting for a byte of the body


def chunks(total: int, size: int = 64 * 1024):
    while total > 0:
        yield b" " * min(size, total)
        total -= size


def test_chunked_json_body_counted_while_streaming(server):
    r = server.post("/train/mlcsc", data=chunks(2 * MiB), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert "max_body_bytes" in r.json()["detail"]


def test_chunked_upload_counted_while_streaming(guarded):
    """guarded: max_upload_bytes 4 MiB; a chunked 8 MiB upload is cut off, a small one is not."""
    headers = {"X-API-Key": TOKEN}
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.nii.gz\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()

    def multipart(n):
        yield head
        yield from chunks(n)
        yield f"\r\n--{boundary}--\r\n".encode()

    ct = {"Content-Type": f"multipart/form-data; boundary={boundary}", **headers}
    r = guarded.put("/datastore/image", params={"image": "big"}, data=multipart(8 * MiB), headers=ct)
    assert r.status_code == 413, r.text
    assert "max_upload_bytes" in r.json()["detail"]
    r = guarded.put("/datastore/image", params={"image": "small"}, data=multipart(1000), headers=ct)
    assert r.status_code in (415, 422), r.text  # read whole and judged on its content


def one_line(r) -> str:
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    assert "Traceback" not in detail and "'type':" not in detail and "input_value" not in detail
    return detail


def test_malformed_json_and_bad_fields_get_one_readable_line(server):
    r = server.post("/train/mlcsc", data="{\"epochs\": 1,", headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert "not valid JSON" in one_line(r)
    r = server.post("/activelearning/random", json=[1, 2])
    assert r.status_code == 422, r.text
    assert "dictionary" in one_line(r) or "object" in one_line(r)
    r = server.put("/datastore/label", params={"tag": "final"}, files={"label": ("x.nii.gz", b"x")})
    assert r.status_code == 422, r.text
    assert "image" in one_line(r)


# ---------------------------------------------------------------------------------------------- request options
@pytest.mark.parametrize("params,reason", [
    ({"epochs": 10_000}, "between 1 and 1000"),
    ({"epochs": 0}, "between 1 and 1000"),
    ({"epochs": 2.5}, "whole number"),
    ({"epochs": 1, "train_config": {"batch_size": 0}}, "train_config.batch_size"),
    ({"epochs": 1, "train_config": {"samples_per_image": 10**9}}, "train_config.samples_per_image"),
    ({"epochs": 1, "train_config": {"patch_size": [4, 64, 64]}}, "train_config.patch_size"),
])
def test_train_options_range_checked(server, params, reason):
    r = server.post("/train/mlcsc", json=params)
    assert r.status_code == 400, r.text
    assert reason in r.json()["detail"]
    assert server.get("/train/").json().get("status") not in ("SUBMITTED", "RUNNING")


def test_train_request_too_long_for_the_training_process(server):
    """Under max_body_bytes but over what one argv string can carry: 413 before a process is started."""
    r = server.post("/train/mlcsc", json={"epochs": 1, "note": "x" * 200_000})
    assert r.status_code == 413, r.text
    assert "command line" in r.json()["detail"]


def test_max_epochs_is_the_servers_setting(guarded):
    r = guarded.post("/train/mlcsc", json={"epochs": 6}, headers={"X-API-Key": TOKEN})
    assert r.status_code == 400, r.text
    assert "between 1 and 5" in r.json()["detail"]


@pytest.mark.parametrize("path,valid", [("/activelearning/nope", "random"), ("/scoring/nope", "sparse_residual")])
def test_unknown_strategy_or_scoring_method_404(server, path, valid):
    r = server.post(path, json={})
    assert r.status_code == 404, r.text
    assert valid in r.json()["detail"]


def test_infer_cannot_write_the_final_label(guarded):
    headers = {"X-API-Key": TOKEN}
    before = guarded.files()
    final = {k: v for k, v in before.items() if k.startswith("labels/final/")}
    assert final
    r = guarded.post("/infer/mlcsc", params={"image": "case_000", "output": "json"}, headers=headers,
                     data={"params": json.dumps({"save_label": "true", "label_tag": "final"})})
    assert r.status_code == 403, r.text
    assert "final label" in r.json()["detail"]
    assert guarded.files() == before
    # the stock default (save to the "original" tag) stays allowed
    r = guarded.post("/infer/mlcsc", params={"image": "case_000", "output": "json"}, headers=headers,
                     data={"params": json.dumps({"save_label": True})})
    assert r.status_code == 200, r.text
    after = guarded.files()
    assert {k: v for k, v in after.items() if k.startswith("labels/final/")} == final
    assert any(k.startswith("labels/original/case_000") for k in after)


def test_limits_shown_in_info_without_the_token(guarded):
    r = requests.get(guarded.url + "/info/", timeout=30)
    assert r.status_code == 200
    assert TOKEN not in r.text
    sec = r.json()["security"]
    assert sec["token_required"] is True and sec["max_epochs"] == 5 and sec["infer_workers"] == 1


# ---------------------------------------------------------------------------------------------- stock routes
STOCK_ROUTES = [
    ("image info not JSON", lambda s: s.put("/datastore/image/info", params={"image": "case_001"},
                                            data={"info": "{bad"}), 400, "'info'"),
    ("label info not an object", lambda s: s.put("/datastore/label/info", params={"label": "case_000", "tag": "final"},
                                                 data={"info": "[1]"}), 400, "'info'"),
    ("label info (deprecated route) not JSON", lambda s: s.put("/datastore/updatelabelinfo", data={"params": "{x"},
                                                              params={"label": "case_000", "tag": "final"}), 400,
     "not valid JSON"),
    ("train all: epochs out of range", lambda s: s.post("/train/", json={"epochs": 10**6}), 400, "between 1 and 1000"),
    ("train all: per-model epochs", lambda s: s.post("/train/", json={"mlcsc": {"epochs": 0}}), 400, "between 1"),
    ("batch infer: unknown model", lambda s: s.post("/batch/infer/nope", json={}), 404, "mlcsc"),
    ("batch infer: final label", lambda s: s.post("/batch/infer/mlcsc", json={"save_label": True, "label_tag": "final"}),
     403, "final label"),
    ("infer with a label file", lambda s: s.post("/infer/mlcsc", params={"image": "case_001"},
                                                 files={"label": ("l.bin", b"xx")}), 400, "label"),
    ("infer as DICOM SEG", lambda s: s.post("/infer/mlcsc", params={"image": "case_001", "output": "dicom_seg"}),
     400, "DICOM SEG"),
    ("whole-slide infer", lambda s: s.post("/infer/wsi/mlcsc", json={}), 404, "whole-slide"),
    ("whole-slide infer v2", lambda s: s.post("/infer/wsi_v2/mlcsc", json={}), 404, "whole-slide"),
]


@pytest.mark.parametrize("name,send,status,reason", STOCK_ROUTES, ids=[r[0] for r in STOCK_ROUTES])
def test_stock_routes_refuse_bad_requests(server, name, send, status, reason):
    before = server.files()
    r = send(server)
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]
    assert server.files() == before
    assert server.get("/train/").json().get("status") not in ("SUBMITTED", "RUNNING")
    assert server.get("/batch/infer").status_code == 404  # no batch task was ever started


def test_info_updates_still_work(server):
    r = server.put("/datastore/image/info", params={"image": "case_001"}, data={"info": json.dumps({"note": "ok"})})
    assert r.status_code == 200, r.text
    assert server.get("/datastore/image/info", params={"image": "case_001"}).json()["note"] == "ok"


def test_slow_stock_routes_still_answer(server):
    """Dataset zip, image checksum, label delete and logs now run in worker threads: same answers as before."""
    r = server.get("/datastore/dataset")
    assert r.status_code == 200 and r.content[:2] == b"PK"
    r = requests.head(server.url + "/datastore/image", params={"image": "case_001", "check_sum": "0" * 64}, timeout=60)
    assert r.status_code == 404  # checksum differs
    assert requests.head(server.url + "/datastore/image", params={"image": "case_001"}, timeout=60).status_code == 200
    assert server.get("/logs/", params={"lines": 5, "text": True}).status_code == 200
    r = server.delete("/datastore/label", params={"id": "case_000", "tag": "never"})
    assert r.status_code == 404 and "never" in r.json()["detail"]


def test_delete_image_still_works(server):
    image = (server.studies / "case_001.nii.gz").read_bytes()
    r = server.put("/datastore/image", params={"image": "to_delete"}, files={"file": ("t.nii.gz", image)})
    assert r.status_code == 200, r.text
    r = server.delete("/datastore/image", params={"id": "to_delete"})
    assert r.status_code == 200, r.text
    assert "to_delete" not in server.get("/datastore/", params={"output": "all"}).json()["objects"]

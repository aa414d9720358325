"""Issue 18, part B: a soak of ~200 mixed requests from 8 client threads, hostile ones mixed in.

Every good request succeeds, every bad one is a 4xx with a reason (never 5xx), the server stays up, and the
datastore's files are intact: images and final labels unchanged, the label saved over and over readable and
equal to what was sent.
"""
from __future__ import annotations

import collections
import json
import random
import threading
import time

import pytest
import requests
from hostile_inputs import gzip_bomb, header_only, zero_spacing

pytestmark = pytest.mark.server

N_REQUESTS = 200
N_CLIENTS = 8


def plan(srv, seed=0) -> list:
    """[(kind, good, send)] in a seeded random order: send() -> requests.Response."""
    label = (srv.phantom / "labelsTr" / "case_001.nii.gz").read_bytes()
    bomb = gzip_bomb(1 << 30)  # over the default max_decompressed_bytes (512 MiB)
    u = srv.url
    good = {
        "info": lambda: requests.get(u + "/info/", timeout=60),
        "listing": lambda: requests.get(u + "/datastore/", params={"output": "all"}, timeout=60),
        "infer": lambda: requests.post(u + "/infer/mlcsc", params={"image": random.choice(["case_000", "case_001"]),
                                                                   "output": "json"}, timeout=600),
        "save label": lambda: requests.put(u + "/datastore/label", params={"image": "case_001", "tag": "soak"},
                                           files={"label": ("l.nii.gz", label)}, timeout=120),
        "download label": lambda: requests.get(u + "/datastore/label", params={"label": "case_000", "tag": "final"},
                                               timeout=60),
        "next sample": lambda: requests.post(u + "/activelearning/random", json={}, timeout=60),
    }
    bad = {
        "bad JSON": lambda: requests.post(u + "/train/mlcsc", data="{\"epochs\":", timeout=60,
                                          headers={"Content-Type": "application/json"}),
        "epochs out of range": lambda: requests.post(u + "/train/mlcsc", json={"epochs": 10**6}, timeout=60),
        "unknown image": lambda: requests.post(u + "/infer/mlcsc", params={"image": "case_999"}, timeout=60),
        "unknown model": lambda: requests.post(u + "/infer/nope", params={"image": "case_001"}, timeout=60),
        "path id": lambda: requests.get(u + "/datastore/image", params={"image": "../datastore_v2.json"}, timeout=60),
        "unknown strategy": lambda: requests.post(u + "/activelearning/nope", json={}, timeout=60),
        "not NIfTI": lambda: requests.put(u + "/datastore/image", params={"image": "junk"}, timeout=60,
                                          files={"file": ("j.nii.gz", b"hello")}),
        "huge header": lambda: requests.put(u + "/datastore/image", params={"image": "huge"}, timeout=60,
                                            files={"file": ("h.nii.gz", header_only((2048, 2048, 2048)))}),
        "gzip bomb": lambda: requests.post(u + "/infer/mlcsc", params={"output": "json"}, timeout=120,
                                           files={"file": ("b.nii.gz", bomb)}),
        "zero spacing": lambda: requests.put(u + "/datastore/image", params={"image": "flat"}, timeout=60,
                                             files={"file": ("z.nii.gz", zero_spacing())}),
        "truncated label": lambda: requests.put(u + "/datastore/label", params={"image": "case_001", "tag": "soak"},
                                                files={"label": ("l.nii.gz", label[:300])}, timeout=60),
        "final via infer": lambda: requests.post(u + "/infer/mlcsc", params={"image": "case_001"}, timeout=60,
                                                 data={"params": json.dumps({"save_label": True,
                                                                             "label_tag": "final"})}),
    }
    rng = random.Random(seed)
    kinds = [(k, True, f) for k, f in good.items()] * 3 + [(k, False, f) for k, f in bad.items()] * 2
    return [rng.choice(kinds) for _ in range(N_REQUESTS)]


def stored(srv) -> dict:
    """{file: sha1} of the images and their final labels (the index itself changes with every save)."""
    return {k: v for k, v in srv.files().items() if k.endswith((".nii", ".nii.gz")) and not k.startswith("labels/soak/")}


def test_soak(server):
    requests_plan = plan(server)
    label = (server.phantom / "labelsTr" / "case_001.nii.gz").read_bytes()
    before = stored(server)
    results, lock = [], threading.Lock()
    todo = list(enumerate(requests_plan))

    def client():
        while True:
            with lock:
                if not todo:
                    return
                i, (kind, good, send) = todo.pop()
            try:
                r = send()
                out = (kind, good, r.status_code, r.text[:300] if r.status_code >= 300 else "")
            except requests.RequestException as e:  # a dropped connection counts as an error
                out = (kind, good, None, str(e))
            with lock:
                results.append(out)

    start = time.time()
    threads = [threading.Thread(target=client) for _ in range(N_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.time() - start

    counts = collections.Counter((good, status) for _, good, status, _ in results)
    good_errors = [r for r in results if r[1] and r[2] != 200]
    bad_not_4xx = [r for r in results if not r[1] and not (r[2] and 400 <= r[2] < 500)]
    print(f"\nsoak: {len(results)} requests from {N_CLIENTS} clients in {seconds:.1f} s; good: "
          f"{sum(1 for r in results if r[1])} ({len(good_errors)} errors), bad: {sum(1 for r in results if not r[1])} "
          f"(statuses {sorted(s for g, s in counts if not g)}, {len(bad_not_4xx)} not 4xx); "
          f"{dict(sorted(collections.Counter(k for k, *_ in results).items()))}")
    assert len(results) == N_REQUESTS
    assert good_errors == []
    assert bad_not_4xx == []

    assert server.get("/info/").status_code == 200
    assert stored(server) == before
    listing = server.get("/datastore/", params={"output": "all"}).json()["objects"]
    assert "final" in listing["case_000"]["labels"]
    if any(kind == "save label" for kind, *_ in results):
        saved = server.get("/datastore/label", params={"label": "case_001", "tag": "soak"})
        assert saved.status_code == 200 and saved.content == label

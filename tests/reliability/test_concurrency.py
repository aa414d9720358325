"""Issue 18, part B: slow work never runs on the event loop, and inference has a bounded queue."""
from __future__ import annotations

import json
import statistics
import threading
import time

import pytest
import requests
from hostile_inputs import TOKEN

pytestmark = pytest.mark.server


# an infer that takes seconds on CPU (integrated gradients, 8 path points): holds its worker for a while
SLOW = {"attribution": "ig", "attribution_steps": 8, "attribution_nifti": True}


def infer(srv, headers=None, image="case_001", params=None):
    start = time.time()
    r = requests.post(srv.url + "/infer/mlcsc", params={"image": image, "output": "json"}, headers=headers or {},
                      data={"params": json.dumps(params or {})}, timeout=600)
    return r, time.time() - start


def test_info_answers_while_8_infers_run(server):
    _, alone = infer(server)
    results, threads = [], []
    for _ in range(8):
        t = threading.Thread(target=lambda: results.append(infer(server)))
        t.start()
        threads.append(t)
    info_s = []
    while any(t.is_alive() for t in threads):
        start = time.time()
        r = requests.get(server.url + "/info/", timeout=60)
        info_s.append(time.time() - start)
        assert r.status_code == 200
        time.sleep(0.05)
    for t in threads:
        t.join()
    p50 = statistics.median(info_s)
    p95 = statistics.quantiles(info_s, n=20)[-1] if len(info_s) >= 2 else info_s[0]
    took = sorted(s for _, s in results)
    print(f"\n/info under 8 concurrent infers: n={len(info_s)} p50 {p50 * 1000:.0f} ms p95 {p95 * 1000:.0f} ms "
          f"max {max(info_s) * 1000:.0f} ms; one infer alone {alone:.1f} s, the 8 took {took[0]:.1f}..{took[-1]:.1f} s")
    assert [r.status_code for r, _ in results] == [200] * 8, [r.text for r, _ in results if r.status_code != 200]
    assert len(info_s) >= 10
    assert p95 < 0.5


def test_full_infer_queue_answers_503(guarded):
    """guarded: 1 worker + 1 waiting. With both taken, 9 more concurrent requests (the 3rd..11th) get 503 at once,
    with Retry-After; the two admitted ones finish normally."""
    headers = {"X-API-Key": TOKEN}
    admitted, threads = [], []
    for _ in range(2):
        t = threading.Thread(target=lambda: admitted.append(infer(guarded, headers, params=SLOW)))
        t.start()
        threads.append(t)
    deadline = time.time() + 30
    while True:  # both admitted: one running, one waiting
        q = requests.get(guarded.url + "/info/", timeout=30).json()["infer_queue"]
        if q["running"] + q["waiting"] == 2:
            break
        assert time.time() < deadline, q
        time.sleep(0.02)
    refused, more = [], []
    for _ in range(9):
        t = threading.Thread(target=lambda: refused.append(infer(guarded, headers)))
        t.start()
        more.append(t)
    for t in more + threads:
        t.join()
    assert [r.status_code for r, _ in refused] == [503] * 9, [r.text for r, _ in refused]
    for r, seconds in refused:
        assert int(r.headers["retry-after"]) > 0
        assert "busy" in r.json()["detail"]
        assert seconds < 5
    assert [r.status_code for r, _ in admitted] == [200, 200], [r.text for r, _ in admitted]
    print(f"\nqueue of 1+1: the 2 admitted took {sorted(round(s, 1) for _, s in admitted)} s, the 9 others were "
          f"refused in at most {max(s for _, s in refused) * 1000:.0f} ms")
    q = requests.get(guarded.url + "/info/", timeout=30).json()["infer_queue"]
    assert q["running"] == q["waiting"] == 0

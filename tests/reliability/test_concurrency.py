"""Issue 18, part B: slow work never runs on the event loop, and inference has a bounded queue."""
from __future__ import annotations

import threading
import time

import pytest
import requests
from hostile_inputs import TOKEN

from sparsesight.bench import server_probes

pytestmark = pytest.mark.server


# an infer that takes seconds on CPU (integrated gradients, 8 path points): holds its worker for a while
SLOW = {"attribution": "ig", "attribution_steps": 8, "attribution_nifti": True}


def infer(srv, headers=None, image="case_001", params=None):
    return server_probes.infer(srv.url, "mlcsc", image, params, headers)


def test_info_answers_while_8_infers_run(server):
    """One infer per client here; `python -m sparsesight.bench.reliability` records the same measurement with 8
    clients sending infers for a while."""
    _, alone = infer(server)
    m = server_probes.info_latency_under_infers(server.url, clients=8, infers_per_client=1)
    took = m["infer_s"]
    print(f"\n/info under 8 concurrent infers: n={m['n']} p50 {m['p50_s'] * 1000:.0f} ms p95 {m['p95_s'] * 1000:.0f} ms "
          f"max {m['max_s'] * 1000:.0f} ms; one infer alone {alone:.1f} s, the 8 took {took[0]:.1f}..{took[-1]:.1f} s")
    assert m["infers"] == {200: 8}, m["infers"]
    assert m["info_status"] == {200: m["n"]}, m["info_status"]
    assert m["n"] >= 10
    assert m["p95_s"] < 0.5


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

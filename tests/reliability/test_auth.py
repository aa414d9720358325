"""Issue 18, part B: the API token, CORS and the disabled /reload, on a server with a token and one without."""
from __future__ import annotations

import pytest
import requests
from hostile_inputs import TOKEN, VIEWER

pytestmark = pytest.mark.server

# every mutating route and every read of images, labels, models, sessions and the datastore listing
GUARDED_ROUTES = [
    ("GET", "/datastore/?output=all"),
    ("GET", "/datastore/image?image=case_001"),
    ("HEAD", "/datastore/image?image=case_001"),
    ("GET", "/datastore/image/info?image=case_001"),
    ("GET", "/datastore/label?label=case_000&tag=final"),
    ("GET", "/datastore/label/info?label=case_000&tag=final"),
    ("GET", "/datastore/dataset"),
    ("PUT", "/datastore/image?image=x"),
    ("PUT", "/datastore/label?image=case_001&tag=final"),
    ("PUT", "/datastore/image/info?image=case_001"),
    ("DELETE", "/datastore/image?id=case_001"),
    ("DELETE", "/datastore/label?id=case_000&tag=final"),
    ("GET", "/model/mlcsc"),
    ("GET", "/model/info/mlcsc"),
    ("PUT", "/model/mlcsc"),
    ("DELETE", "/model/mlcsc"),
    ("GET", "/session/some-session"),
    ("PUT", "/session/"),
    ("DELETE", "/session/some-session"),
    ("POST", "/infer/mlcsc?image=case_001"),
    ("POST", "/train/mlcsc"),
    ("DELETE", "/train/"),
    ("POST", "/activelearning/random"),
    ("POST", "/scoring/epistemic"),
    ("POST", "/batch/infer/mlcsc"),
    ("GET", "/logs/"),
]


@pytest.mark.parametrize("method,path", GUARDED_ROUTES)
def test_token_required(guarded, method, path):
    before = guarded.files()
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        r = requests.request(method, guarded.url + path, headers=headers, timeout=30)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert r.headers.get("www-authenticate") == "Bearer"
        if method != "HEAD":
            assert "API token" in r.json()["detail"]
    assert guarded.files() == before


@pytest.mark.parametrize("headers", [{"X-API-Key": TOKEN}, {"Authorization": f"Bearer {TOKEN}"}])
def test_token_accepted_in_either_header(guarded, headers):
    r = guarded.get("/datastore/", params={"output": "all"}, headers=headers)
    assert r.status_code == 200, r.text
    assert "case_001" in r.json()["objects"]
    r = guarded.get("/datastore/image", params={"image": "case_001"}, headers=headers)
    assert r.status_code == 200 and r.content[:2] == b"\x1f\x8b"


def test_info_open_and_never_shows_the_token(guarded):
    r = requests.get(guarded.url + "/info/", timeout=30)
    assert r.status_code == 200
    assert TOKEN not in r.text
    assert r.json()["security"]["token_required"] is True
    assert requests.get(guarded.url + "/logs/", params={"lines": 1000}, timeout=30).status_code == 401


def test_no_token_configured_means_open(server):
    assert server.info()["security"]["token_required"] is False
    assert server.get("/datastore/", params={"output": "all"}).status_code == 200


@pytest.mark.parametrize("which", ["server", "guarded"])
def test_reload_refused(request, which):
    srv = request.getfixturevalue(which)
    r = srv.post("/reload", headers={"X-API-Key": TOKEN})
    assert r.status_code == 403, r.text
    assert "restart the server" in r.json()["detail"]


# ---------------------------------------------------------------------------------------------- CORS
def preflight(srv, origin, method="PUT"):
    return requests.options(srv.url + "/datastore/label", timeout=30, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type"})


def test_cors_listed_origin(guarded):
    r = preflight(guarded, VIEWER)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == VIEWER
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in r.headers
    r = guarded.get("/datastore/", params={"output": "all"}, headers={"Origin": VIEWER, "X-API-Key": TOKEN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == VIEWER


@pytest.mark.parametrize("which", ["server", "guarded"])
def test_cors_unlisted_origin(request, which):
    srv = request.getfixturevalue(which)
    evil = "http://evil.example"
    r = preflight(srv, evil)
    assert r.status_code == 403, r.text
    assert "cors_origins" in r.json()["detail"]
    assert "access-control-allow-origin" not in r.headers
    r = srv.get("/info/", headers={"Origin": evil})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-credentials" not in r.headers
    # a cross-site form post needs no pre-flight: refused before it reaches the route (CSRF)
    before = srv.files()
    r = srv.post("/train/mlcsc", data="epochs=1", headers={"Origin": evil, "Content-Type": "text/plain",
                                                           "X-API-Key": TOKEN})
    assert r.status_code == 403 and "cors_origins" in r.json()["detail"], r.text
    assert srv.files() == before


def test_slicer_client_sends_the_token(guarded, monkeypatch):
    """The Slicer module's REST client: token argument, else $SPARSESIGHT_API_TOKEN; without it the server's reason."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "slicer_extension" / "SparseSight"))
    from SparseSightLib.client import ServerError, SparseSightClient

    monkeypatch.delenv("SPARSESIGHT_API_TOKEN", raising=False)
    with pytest.raises(ServerError) as refused:
        SparseSightClient(guarded.url, timeout=30).datastore()
    assert refused.value.status == 401 and "API token" in refused.value.reason
    assert "case_001" in str(SparseSightClient(guarded.url, timeout=30, token=TOKEN).datastore())
    monkeypatch.setenv("SPARSESIGHT_API_TOKEN", TOKEN)
    assert "case_001" in str(SparseSightClient(guarded.url, timeout=30).datastore())

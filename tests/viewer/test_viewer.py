"""The review page in real headless Chromium over the real server: what a reviewer sees, checked on the pixels.

The tests run in file order on one page (module fixtures): open a labelled case, run a model, switch maps, edit
and submit the label, then the bad inputs. Screenshots go to out/test-artefacts/viewer/."""
from __future__ import annotations

import io
import json
import re
import time
import zipfile

import nibabel as nib
import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = [pytest.mark.server, pytest.mark.slicer, pytest.mark.slow]

TIMES: dict = {}  # measured seconds, printed at the end (and written next to the screenshots)


# ------------------------------------------------------------------------------------------------ helpers
def views(page, path=None) -> dict:
    """{view name: RGB array} of the 3 slice views + 3D (the 'Quad View': coronal, 3D / sagittal, axial)."""
    png = page.locator("#ss-views").screenshot(path=str(path) if path else None)
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    h, w = a.shape[0] // 2, a.shape[1] // 2
    return {"coronal": a[:h, :w], "3d": a[:h, w:], "sagittal": a[h:, :w], "axial": a[h:, w:]}


def centre(a: np.ndarray, frac: float = 0.3) -> np.ndarray:
    h, w = a.shape[:2]
    dh, dw = int(h * frac / 2), int(w * frac / 2)
    return a[h // 2 - dh:h // 2 + dh, w // 2 - dw:w // 2 + dw]


def changed(a: np.ndarray, b: np.ndarray, tol: int = 24) -> np.ndarray:
    return np.abs(a - b).max(-1) > tol


def status(page) -> str:
    return page.inner_text("#ss-status")


def error(page) -> str:
    return page.inner_text("#ss-error") if page.locator("#ss-error").is_visible() else ""


def actions(page) -> int:
    return int(page.text_content("#ss-actions") or 0)


def click_action(page, selector: str, timeout: float = 240_000):
    """Click a button of the side panel and wait until the viewer answered it (done or failed)."""
    n = actions(page)
    page.click(selector)
    page.wait_for_function("n => +document.querySelector('#ss-actions').textContent > n", arg=n, timeout=timeout)


def wait_status(page, text: str, timeout: float = 180_000):
    page.wait_for_function("t => document.querySelector('#ss-status').textContent.includes(t) || "
                           "document.querySelector('#ss-error').textContent.length > 0", arg=text, timeout=timeout)
    assert not error(page), error(page)


def settle(page, ms: int = 2600):
    """Let the views stream their next frame; the mouse passes over the four views as a reviewer's
    would (a view may keep its previous frame until then, see ReviewApp._views_render)."""
    page.wait_for_timeout(ms // 2)
    box = page.locator("#ss-views").bounding_box()
    for fx, fy in ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)):
        x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
        page.mouse.move(x, y)
        page.mouse.move(x + 2, y + 2)
        page.wait_for_timeout(150)
    page.mouse.move(box["x"] - 50, box["y"] + 10)  # off the views (the side panel)
    page.wait_for_timeout(ms // 2)


def connect(page, url: str):
    page.fill("#ss-url", url)
    click_action(page, "#ss-connect")


def stored_label(server, image_id: str) -> np.ndarray:
    r = requests.get(server.url + "/datastore/label", params={"label": image_id, "tag": "final"}, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(nib.Nifti1Image.from_bytes(_gunzip(r.content)).dataobj)


def _gunzip(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


# ------------------------------------------------------------------------------------------------- tests
def test_open_case_shows_modalities_and_label_at_the_tumour(page, viewer, server, artefacts):
    page.goto(viewer.url)
    page.wait_for_selector("#ss-connect")
    assert page.input_value("#ss-url") == server.url  # --url given on the command line connects at start
    page.wait_for_selector("#ss-image option[value='case_000']", state="attached")
    page.select_option("#ss-image", "case_000")  # the case with a final label
    click_action(page, "#ss-open")
    wait_status(page, "open case_000")
    settle(page)
    TIMES["viewer up + first case shown (s)"] = round(time.time() - viewer.t0, 1)
    TIMES["viewer answering HTTP (s)"] = round(viewer.up_s, 1)
    with_label = views(page, artefacts / "01-case_000-label.png")
    for name, a in with_label.items():  # not blank: the image has structure in every view
        assert a.std() > 20, f"{name} view looks blank (std {a.std():.1f})"
    for name in ("axial", "coronal", "sagittal"):  # the views are centred on the label: the tumour is in the middle
        a = with_label[name]
        coloured = np.abs(a - a.mean(-1, keepdims=True)).max(-1) > 25  # the image itself is grey
        mid = centre(coloured, 0.4)
        assert mid.mean() > 0.05, f"{name}: no label colour at the tumour ({mid.mean():.3f} of the centre coloured)"
        ys, xs = np.nonzero(coloured)
        h, w = coloured.shape
        assert abs(ys.mean() / h - 0.5) < 0.15 and abs(xs.mean() / w - 0.5) < 0.15, f"{name}: label off centre"
        px = a[coloured]
        green = (px[:, 1] > px[:, 0] + 10) & (px[:, 1] > px[:, 2] + 10)  # oedema (BraTS green)
        red = (px[:, 0] > px[:, 1] + 40) & (px[:, 0] > px[:, 2] + 40)  # enhancing (red)
        assert green.mean() > 0.2 and red.mean() > 0.02, f"{name}: not the label colours (green {green.mean():.2f}, red {red.mean():.2f})"
    page.uncheck("#ss-label-visible")  # the colours are the label's: hidden, they are gone (axial view)
    settle(page)
    without = views(page, artefacts / "02-case_000-no-label.png")["axial"]
    assert (np.abs(without - without.mean(-1, keepdims=True)).max(-1) > 25).mean() < 0.002
    page.check("#ss-label-visible")
    settle(page)


def test_inference_maps_change_the_pixels_and_tables_show(page, artefacts):
    page.select_option("#ss-attribution", "gradient")
    page.select_option("#ss-attr-target", "enhancing")
    page.fill("#ss-outputs", "label,components:T1ce,reconstruction,params")
    t0 = time.time()
    click_action(page, "#ss-infer")
    wait_status(page, "mlcsc on case_000")
    TIMES["run inference, bundle shown (s)"] = round(time.time() - t0, 1)
    settle(page)
    overlays = page.eval_on_selector_all("#ss-overlay option", "els => els.map(e => e.value)")
    component = next(o for o in overlays if o.startswith("component/enhancing/"))
    attribution = next(o for o in overlays if o.startswith("attribution/gradient/"))
    assert any(o.startswith("reconstruction/") for o in overlays), overlays
    page.uncheck("#ss-label-visible")  # the maps alone (the model's label may be empty after one short epoch)
    settle(page)
    base = views(page, artefacts / "03-inferred-no-overlay.png")["axial"]
    shots = {}
    for name, tag in ((component, "04-component"), (attribution, "05-attribution")):
        t0 = time.time()
        page.select_option("#ss-overlay", name)
        before = shots[list(shots)[-1]] if shots else base
        box = page.locator("#ss-views").bounding_box()
        ax, ay = box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.9  # a corner of the axial view
        while time.time() - t0 < 10:  # until the axial view shows the new map
            page.mouse.move(ax, ay)
            page.mouse.move(ax + 2, ay)
            now = views(page)["axial"]
            if changed(now, before).mean() > 0.01:
                break
        TIMES[f"switch to {name} (s)"] = round(time.time() - t0, 2)
        settle(page, 800)
        shots[name] = views(page, artefacts / f"{tag}.png")["axial"]
        assert changed(centre(shots[name], 0.5), centre(before, 0.5)).mean() > 0.05, f"{name} did not change the view"
        assert "linear-gradient" in (page.get_attribute("#ss-colour-bar", "style") or "")  # colour bar shown
    metrics = page.inner_text("#ss-metrics")
    assert "explanation quality" in metrics and "faithfulness" in metrics, metrics
    tables = page.inner_text("#ss-tables")
    assert tables.strip(), "no table of the bundle shown"
    page.check("#ss-label-visible")


def test_paint_and_submit_changes_the_stored_label_exactly_there(page, server, artefacts):
    before = stored_label(server, "case_000")
    page.select_option("#ss-image", "case_000")
    click_action(page, "#ss-open")  # back to the stored label (the one to correct)
    wait_status(page, "open case_000")
    settle(page)
    box = page.locator("#ss-views").bounding_box()
    # axial view = bottom-right quarter; a point left of the tumour (centred) that is background
    qx, qy, qw, qh = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, box["width"] / 2, box["height"] / 2
    voxel = None
    for dx in (-0.22, -0.28, -0.18, 0.25):
        x, y = qx + qw * (0.5 + dx), qy + qh * 0.5
        page.mouse.move(x - 3, y)
        page.mouse.move(x, y)
        page.wait_for_timeout(800)
        probe = page.inner_text("#ss-probe")
        m = re.search(r"voxel \((\d+), (\d+), (\d+)\)", probe)
        if m and re.search(r"label\s+background", probe):
            voxel = np.array([int(g) for g in m.groups()])
            break
    assert voxel is not None, f"no background voxel found left of the tumour: {probe}"
    assert before[tuple(voxel)] == 0
    page.fill("#ss-brush", "10")
    page.select_option("#ss-paint-segment", "oedema")
    page.click("#ss-paint")
    page.wait_for_function("() => document.querySelector('#ss-edit-effect').textContent.includes('paint')")
    page.wait_for_timeout(1000)  # the effect's pipelines are built in every slice view
    page.mouse.move(x, y)
    page.wait_for_timeout(300)
    page.mouse.down()
    for step in range(1, 9):  # a short stroke (16 px, about 8 mm here)
        page.mouse.move(x + 2 * step, y)
        page.wait_for_timeout(80)
    page.wait_for_timeout(300)
    page.mouse.up()
    settle(page)  # the stroke is committed to the segmentation (and shown) before the editing stops
    page.click("#ss-stop")
    views(page, artefacts / "06-painted.png")
    t0 = time.time()
    click_action(page, "#ss-submit")
    wait_status(page, "submit the label of case_000")
    TIMES["submit label (s)"] = round(time.time() - t0, 1)
    after = stored_label(server, "case_000")
    assert after.shape == before.shape
    diff = np.argwhere(after != before)
    assert len(diff) > 0, "the painted voxels did not reach the server"
    assert (after[tuple(diff.T)] == 1).all(), "painted voxels are not oedema"
    dist = np.linalg.norm(diff - voxel, axis=1)
    assert dist.max() <= 4.5, f"voxels changed away from the brush ({dist.max():.1f} voxels from {voxel.tolist()})"
    assert len(diff) <= 120


def test_bad_input_is_said_in_words_and_the_page_stays_usable(page, server, tmp_path, artefacts):
    # a bundle that lacks an output file its manifest lists
    r = requests.post(server.url + "/infer/mlcsc", params={"image": "case_001", "output": "image"},
                      data={"params": json.dumps({"bundle": True, "outputs": ["label", "params"]})}, timeout=300)
    assert r.status_code == 200, r.text
    src = zipfile.ZipFile(io.BytesIO(r.content))
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as z:
        for item in src.infolist():
            if not item.filename.endswith(".csv"):
                z.writestr(item, src.read(item))
    page.fill("#ss-bundle-path", str(broken))
    click_action(page, "#ss-open-bundle")
    assert "bundle lacks params.csv" in error(page), error(page)
    # the server is not there
    connect(page, "http://127.0.0.1:9")
    assert "cannot reach the SparseSight server" in error(page), error(page)
    page.screenshot(path=str(artefacts / "07-unreachable.png"))
    # and the page still works: connect back, open a case
    connect(page, server.url)
    assert not error(page)
    page.select_option("#ss-image", "case_001")
    click_action(page, "#ss-open")
    wait_status(page, "open case_001")
    assert error(page) == ""


def test_wrong_token_is_refused_in_words(browser, server_tools, viewer_class, tmp_path_factory, artefacts):
    """A server with an API token: a wrong token is the server's refusal on the page, the right one connects."""
    make_datastore, start = server_tools
    work = tmp_path_factory.mktemp("token-server")
    studies, phantom = make_datastore(work, n_cases=1)
    srv = start(work, studies, phantom, conf={"api_token": "s3cret", "models": "microstructure"}, name="token")
    viewer = None
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        viewer = viewer_class(srv.url, work / "viewer.log", token="wrong").wait()
        page.goto(viewer.url)
        page.wait_for_selector("#ss-connect")
        connect(page, srv.url)
        assert re.search(r"connect to .* failed: .*(401|403|token|key)", error(page), re.I), error(page)
        page.screenshot(path=str(artefacts / "08-wrong-token.png"))
        page.fill("#ss-token", "s3cret")
        connect(page, srv.url)
        assert error(page) == ""
        page.wait_for_selector("#ss-image option[value='case_000']", state="attached")
    finally:
        page.close()
        if viewer:
            viewer.stop()
        srv.process.stop()


def test_times(artefacts):
    (artefacts / "times.json").write_text(json.dumps(TIMES, indent=1))
    print("\n" + json.dumps(TIMES, indent=1))
    assert TIMES

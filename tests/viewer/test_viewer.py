"""The review page in real headless Chromium over the real server: what a reviewer sees, checked on the pixels.

The tests run in file order on one page (module fixtures): open a labelled case, run a model, switch maps, edit
and submit the label (paint, threshold), ask for the next sample, start a training (it runs while the token test
starts a server of its own) and see it finish, then the bad inputs. Changes made in the side panel must reach the
views with the mouse away from them. Screenshots go to out/test-artefacts/viewer/."""
from __future__ import annotations

import io
import json
import logging
import re
import time
import zipfile

import nibabel as nib
import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = [pytest.mark.server, pytest.mark.slicer, pytest.mark.slow]
log = logging.getLogger(__name__)

TIMES: dict = {}  # measured seconds, printed at the end (and written next to the screenshots)
AIMS = {"viewer up + first case shown (s)": 20.0, "switch a map (s)": 1.0, "tests/viewer (s)": 180.0}  # issue 19
NODES: dict = {}  # MRML nodes in the viewer's scene when a case was shown, by image
STARTED: dict = {}  # when a long action began (training)
#: a side-panel change must be on the page within this many seconds without the mouse over the views
FRAME_S = 2.0


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def clock(server) -> float:
    """When this module's tests began (the session's server already up; the viewer not yet started)."""
    return time.time()


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


def away(page):
    """The mouse onto the side panel, off the views (what reaches the views then is pushed by the viewer)."""
    page.mouse.move(200, 400)


def settle(page, ms: int = 1200):
    """Let the views stream their next frames, the mouse off the views."""
    away(page)
    page.wait_for_timeout(ms)


def wait_frame(page, before: dict, view: str = "axial", timeout: float = FRAME_S, min_changed: float = 0.01):
    """Seconds until `view` differs from `before` on the page (the mouse stays where it is), None if it doesn't
    within `timeout`. The views' <img> sources are polled (cheap); each new frame is compared on a screenshot."""
    src = "() => Array.from(document.querySelectorAll('#ss-views img')).map(e => e.src).join()"
    t0, last = time.time(), None
    while time.time() - t0 < timeout:
        now = page.evaluate(src)
        if now != last:
            seen = time.time() - t0
            last = now
            if changed(views(page)[view], before[view]).mean() > min_changed:
                return round(seen, 2)
        page.wait_for_timeout(20)
    return None


def scene_nodes(page) -> int:
    return int(page.text_content("#ss-scene-nodes") or 0)


def open_image(page, image_id: str):
    page.select_option("#ss-image", image_id)
    click_action(page, "#ss-open")
    wait_status(page, f"open {image_id}")


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
def test_open_case_shows_modalities_and_label_at_the_tumour(clock, page, viewer, server, artefacts):
    page.goto(viewer.url)
    page.wait_for_selector("#ss-connect")
    assert page.input_value("#ss-url") == server.url  # --url given on the command line connects at start
    page.wait_for_selector("#ss-image option[value='case_000']", state="attached")
    away(page)
    open_image(page, "case_000")  # the case with a final label
    deadline = time.time() + 30
    while time.time() < deadline and min(a.std() for a in views(page).values()) <= 20:  # every view drawn
        page.wait_for_timeout(100)
    TIMES["viewer up + first case shown (s)"] = round(time.time() - viewer.t0, 1)
    TIMES["viewer answering HTTP (s)"] = round(viewer.up_s, 1)
    NODES["case_000"] = scene_nodes(page)
    settle(page)
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
    assert wait_frame(page, with_label) is not None, f"hiding the label did not reach the views in {FRAME_S} s"
    settle(page, 300)
    without = views(page, artefacts / "02-case_000-no-label.png")["axial"]
    assert (np.abs(without - without.mean(-1, keepdims=True)).max(-1) > 25).mean() < 0.002
    page.check("#ss-label-visible")
    assert wait_frame(page, {"axial": without}) is not None, f"showing the label did not reach the views in {FRAME_S} s"


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
    shots = {"none": views(page, artefacts / "03-inferred-no-overlay.png")}
    for name, tag in ((component, "04-component"), (attribution, "05-attribution")):
        before = shots[list(shots)[-1]]
        away(page)  # nothing but the viewer's own frames may change the views
        page.select_option("#ss-overlay", name)
        seconds = wait_frame(page, before)
        assert seconds is not None, f"{name} did not reach the views in {FRAME_S} s with the mouse off them"
        TIMES[f"switch to {name} (s)"] = seconds
        settle(page, 500)
        shots[name] = views(page, artefacts / f"{tag}.png")
        now = shots[name]["axial"]
        assert changed(centre(now, 0.5), centre(before["axial"], 0.5)).mean() > 0.05, f"{name} did not change the view"
        assert "linear-gradient" in (page.get_attribute("#ss-colour-bar", "style") or "")  # colour bar shown
    before = views(page)
    page.eval_on_selector("#ss-opacity", "e => { e.value = 0.2; e.dispatchEvent(new Event('input')); }")
    assert wait_frame(page, before) is not None, f"the opacity did not reach the views in {FRAME_S} s"
    settle(page, 300)
    before = views(page)
    page.select_option("#ss-background", "FLAIR")
    for view in ("axial", "3d"):  # the slice views and the volume rendering
        assert wait_frame(page, before, view) is not None, f"the {view} view kept the old image past {FRAME_S} s"
    page.select_option("#ss-background", "T1ce")
    metrics = page.inner_text("#ss-metrics")
    assert "explanation quality" in metrics and "faithfulness" in metrics, metrics
    tables = page.inner_text("#ss-tables")
    assert tables.strip(), "no table of the bundle shown"
    page.check("#ss-label-visible")


def test_paint_and_submit_changes_the_stored_label_exactly_there(page, server, artefacts):
    before = stored_label(server, "case_000")
    open_image(page, "case_000")  # back to the stored label (the one to correct)
    assert scene_nodes(page) == NODES["case_000"], "the bundle's or the previous image's nodes stayed in the scene"
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


def test_threshold_and_submit_changes_the_stored_label_where_the_image_is_in_range(page, server, artefacts):
    before = stored_label(server, "case_000")
    t1ce = np.asarray(nib.load(server.studies / "case_000.nii.gz").dataobj)[..., 2]  # the modality shown
    assert page.input_value("#ss-background") == "T1ce"
    values = np.unique(t1ce)
    lo = float(values[np.searchsorted(values, np.percentile(t1ce, 99))]) - 0.5  # the brightest 1 %: between values
    hi = float(values[-1]) + 0.5
    inside = (t1ce >= lo) & (t1ce <= hi)
    page.select_option("#ss-paint-segment", "enhancing")
    page.click("#ss-threshold")
    page.wait_for_function("() => document.querySelector('#ss-edit-effect').textContent.includes('threshold')")
    assert "T1ce ranges" in page.inner_text("#ss-thr-range")  # the image's whole range, the default
    page.fill("#ss-thr-min", f"{lo}")
    page.fill("#ss-thr-max", f"{hi}")
    settle(page)  # the preview follows the range
    views(page, artefacts / "07-threshold-preview.png")
    click_action(page, "#ss-thr-apply")
    wait_status(page, "threshold T1ce")
    page.click("#ss-stop")
    click_action(page, "#ss-submit")
    wait_status(page, "submit the label of case_000")
    after = stored_label(server, "case_000")
    assert (after[inside] == 3).all(), f"{(after[inside] != 3).sum()} of {inside.sum()} voxels in range are not enhancing"
    assert (after[~inside] == before[~inside]).all(), "voxels out of the range changed"
    assert (before[inside] != 3).any(), "the threshold changed nothing (choose another range)"


def test_the_voxel_under_the_cursor_is_explained_for_a_brats_region(page, server):
    """Attribution of the whole tumour (WT) at the voxel the cursor points at: the page sends the cursor's world point
    (attribution_point; the server places it on the grid the model saw) and shows the map."""
    open_image(page, "case_000")
    box = page.locator("#ss-views").bounding_box()
    x, y = box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.75  # the axial view's centre: the tumour
    page.mouse.move(x - 3, y)
    page.mouse.move(x, y)
    page.wait_for_function("() => /voxel \\(\\d+, \\d+, \\d+\\)/.test(document.querySelector('#ss-probe').textContent)",
                           timeout=30_000)
    away(page)
    # the targets are the model's classes from /info, and the BraTS regions since it has the three tumour classes
    labels = server.get("/info/").json()["models"]["mlcsc"]["labels"]
    targets = page.eval_on_selector_all("#ss-attr-target option", "els => els.map(e => e.value)")
    assert targets == sorted(labels, key=labels.get) + ["WT", "TC", "ET"], (targets, labels)
    page.select_option("#ss-attribution", "gradient")
    page.select_option("#ss-attr-target", "WT")
    page.select_option("#ss-attr-at", "cursor")
    page.fill("#ss-attr-steps", "1")
    page.fill("#ss-outputs", "label")
    click_action(page, "#ss-infer")
    wait_status(page, "mlcsc on case_000")
    overlays = page.eval_on_selector_all("#ss-overlay option", "els => els.map(e => e.value)")
    assert "attribution/gradient/WT" in overlays, overlays
    metrics = page.inner_text("#ss-metrics")  # what the map explains is said beside its figures
    assert re.search(r"attribution/gradient/WT\s+region\s+point \[.*\] mm \(voxel \[\d+, \d+, \d+\]\)", metrics), metrics
    page.select_option("#ss-attr-at", "predicted")
    page.select_option("#ss-attr-target", "enhancing")
    page.fill("#ss-outputs", "")


def test_next_sample_opens_an_unlabelled_image_and_switches_leave_no_nodes(page, server):
    objects = server.get("/datastore/?output=all").json()["objects"]  # other test folders may have added images
    unlabelled = {k for k, v in objects.items() if "final" not in v.get("labels", {})}
    assert unlabelled, objects.keys()
    page.select_option("#ss-strategy", "random")
    click_action(page, "#ss-next")
    page.wait_for_function("ids => ids.some(i => document.querySelector('#ss-status').textContent.includes("
                           "'open ' + i + ':')) || document.querySelector('#ss-error').textContent.length > 0",
                           arg=sorted(unlabelled), timeout=180_000)
    assert not error(page), error(page)
    sample = page.input_value("#ss-image")
    assert sample in unlabelled, f"next sample {sample} (unlabelled: {unlabelled})"
    NODES[sample] = scene_nodes(page)
    for image_id in ("case_000", sample):  # two more switches: no image leaves nodes behind
        open_image(page, image_id)
    assert scene_nodes(page) == NODES[sample], f"{sample}: {NODES[sample]} nodes, then {scene_nodes(page)}"
    # training starts here and runs on the server while the next test starts a server of its own (the CPU time of
    # the two overlaps); test_training_started_in_the_page_finishes waits for its end on this page
    page.fill("#ss-epochs", "1")
    STARTED["training"] = time.time()
    click_action(page, "#ss-train")
    assert not error(page), error(page)
    assert page.inner_text("#ss-training").strip(), "the page shows no training status"

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
        page.screenshot(path=str(artefacts / "10-wrong-token.png"))
        page.fill("#ss-token", "s3cret")
        connect(page, srv.url)
        assert error(page) == ""
        page.wait_for_selector("#ss-image option[value='case_000']", state="attached")
    finally:
        page.close()
        if viewer:
            viewer.stop()
        srv.process.stop()


def test_training_started_in_the_page_finishes(page, artefacts):
    page.wait_for_function("() => /DONE|FAILED|STOPPED|cannot/.test(document.querySelector('#ss-training')"
                           ".textContent)", timeout=180_000)
    TIMES["train 1 epoch from the page (s)"] = round(time.time() - STARTED["training"], 1)
    training = page.inner_text("#ss-training")
    page.screenshot(path=str(artefacts / "08-trained.png"))
    assert training.startswith("DONE 1/1"), training


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
    # a whole bundle of an older format (no "format" key): shown, and the page says what that means
    older = tmp_path / "older.zip"
    with zipfile.ZipFile(older, "w") as z:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "manifest.json":
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != "format"}).encode()
            z.writestr(item, data)
    page.fill("#ss-bundle-path", str(older))
    click_action(page, "#ss-open-bundle")
    assert not error(page), error(page)
    notes = " ".join(page.locator(".ss-notes").all_inner_texts())
    assert "older SparseSight (format 1" in notes, notes
    # the server is not there
    connect(page, "http://127.0.0.1:9")
    assert "cannot reach the SparseSight server" in error(page), error(page)
    page.screenshot(path=str(artefacts / "09-unreachable.png"))
    # and the page still works: connect back, open a case
    connect(page, server.url)
    assert not error(page)
    page.select_option("#ss-image", "case_001")
    click_action(page, "#ss-open")
    wait_status(page, "open case_001")
    assert error(page) == ""


def test_times(artefacts, clock):
    TIMES["tests/viewer (s)"] = round(time.time() - clock, 1)
    switches = [v for k, v in TIMES.items() if k.startswith("switch to ")]
    measured = {"viewer up + first case shown (s)": TIMES.get("viewer up + first case shown (s)"),
                "switch a map (s)": max(switches) if switches else None, "tests/viewer (s)": TIMES["tests/viewer (s)"]}
    TIMES["aims"] = {k: {"aim": aim, "measured": measured[k], "met": measured[k] is not None and measured[k] <= aim}
                     for k, aim in AIMS.items()}
    (artefacts / "times.json").write_text(json.dumps(TIMES, indent=1))
    log.info("viewer times:\n%s", json.dumps(TIMES, indent=1))
    assert TIMES

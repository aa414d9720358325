"""The review page: trame-slicer's 3 slice views + 3D over the scene of a `ReviewSession`, a side panel with the
server, the image list, the model run, the overlays with their colour bar, the tables, plots and metrics, the
probe, the segment editor and the annotator's actions.

    ReviewApp(url="http://127.0.0.1:8000").server.start(host="127.0.0.1", port=8080)   # or serve(...)

Every action says what happened (or why not, in the server's words) in the page's status line; a failed action
changes nothing stored. Controls carry ids (`ss-...`) so the browser tests can find them."""
from __future__ import annotations

import asyncio
import logging
import os
import time

from . import render

log = logging.getLogger(__name__)

#: the 3 slice views and the 3D view
LAYOUT_ID = "Quad View"
NONE = "none"
#: JPEG quality of every streamed frame: one render per change (trame-rca renders a change twice, at an
#: interactive then a still quality, when the two differ)
FRAME_QUALITY = 90
#: pixels the 3D view renders at most (the page scales the frame up): Slicer's volume rendering takes 1.2-2.5 s a
#: frame at 470 x 410 pixels on Mesa llvmpipe with 2 cores, 0.15-0.25 s at this size, and a frame holds up the page
THREE_D_PIXELS = 20_000


def configure_headless() -> None:
    """Off-screen rendering without a display (Mesa EGL / llvmpipe) unless the caller chose a window type."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


class ReviewApp:
    def __init__(self, server=None, url: str = "", token: str = "", model: str = ""):
        configure_headless()
        from trame.app import get_server
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        from .session import ReviewSession

        self.server = get_server(server, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer = SlicerApp()
        self.slicer.view_manager.register_factory(_three_d_view_factory(self.server))  # first: it makes the 3D view
        register_rca_factories(self.slicer.view_manager, self.server, interactive_quality=FRAME_QUALITY)
        self.layout_manager = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT_ID)
        self.session = ReviewSession(self.slicer.scene)
        self._editor = self._editor_source = None
        self._probe_ijk = None
        self._probe_ras: list[float] | None = None  # the cursor's last point on the image (world mm, RAS)
        self._training_task = None
        self._init_state(url, token, model)
        from .ui import build_page

        build_page(self)
        self._watch_cursor()

    # ------------------------------------------------------------------ state
    def _init_state(self, url, token, model):
        s = self.state
        s.trame__title = "SparseSight review"
        s.update({
            "ss_url": url, "ss_token": token, "ss_connected": False, "ss_error": "", "ss_status": "not connected",
            "ss_images": [], "ss_image": "", "ss_models": [], "ss_model": model, "ss_strategies": [],
            "ss_strategy": "random", "ss_background": "T1ce", "ss_overlays": [], "ss_overlay": NONE,
            "ss_overlay_info": "", "ss_overlay_bar": "", "ss_overlay_lo": "", "ss_overlay_hi": "",
            "ss_opacity": 0.6, "ss_tables_html": "", "ss_metrics_html": "", "ss_plots": [], "ss_notes": [],
            "ss_probe_html": "", "ss_case_shown": 0, "ss_switched": 0, "ss_submitted": 0, "ss_edit_effect": "none",
            "ss_brush": 3.0, "ss_epochs": 1, "ss_training": "", "ss_bundle_path": "", "ss_busy": False,
            "ss_label_visible": True, "ss_attribution": "", "ss_attr_target": "enhancing", "ss_attr_targets": [],
            "ss_attr_at": "predicted", "ss_attr_steps": 4,
            "ss_paint_segment": "enhancing", "ss_outputs": "", "ss_actions": 0, "ss_thr_min": "", "ss_thr_max": "",
            "ss_thr_image_range": "", "ss_scene_nodes": 0,
        })
        s.change("ss_overlay")(lambda ss_overlay, **_: self._on_overlay(ss_overlay))
        s.change("ss_background")(lambda ss_background, **_: self._on_background(ss_background))
        s.change("ss_opacity")(lambda ss_opacity, **_: self._on_opacity(ss_opacity))
        s.change("ss_label_visible")(lambda ss_label_visible, **_: self._on_label_visible(ss_label_visible))
        s.change("ss_thr_min", "ss_thr_max")(lambda **_: self._on_threshold())
        s.change("ss_model")(lambda ss_model, **_: self._on_model(ss_model))

    def _on_model(self, model):
        """What an attribution map of the chosen model can explain, from /info (as the Slicer module builds it)."""
        targets = self.session.logic.attribution_targets(model) if model else []
        self.state.ss_attr_targets = targets
        if targets and self.state.ss_attr_target not in targets:
            self.state.ss_attr_target = targets[0]

    def _action(self, what: str, fn, *args, **kw):
        """Run a page action: status says what happened, error its reason (the page stays usable)."""
        from .session import message

        t0 = time.time()
        self.state.ss_error = ""
        try:
            result = fn(*args, **kw)
        except Exception as e:  # every failure is shown to the user, in words
            self.state.ss_error = f"{what} failed: {message(e)}"
            log.warning("%s", self.state.ss_error)
            return None
        finally:
            self.state.ss_actions += 1  # actions answered (the page's tests wait on it)
        self.state.ss_status = f"{what}: done in {time.time() - t0:.1f} s"
        return result if result is not None else True

    # ------------------------------------------------------------------ server
    def _take(self, **values):
        """Values a button sends with its click (the page's fields at that moment): the state follows them."""
        for k, v in values.items():
            if v is not None:
                self.state[k] = v

    def connect(self, url=None, token=None):
        self._take(ss_url=url, ss_token=token)
        def go():
            info = self.session.connect(self.state.ss_url, self.state.ss_token)
            self.state.ss_models = sorted(info.get("models", {}))
            if self.state.ss_model not in self.state.ss_models:
                self.state.ss_model = "mlcsc" if "mlcsc" in self.state.ss_models else (self.state.ss_models or [""])[0]
            self.state.ss_strategies = sorted(info.get("strategies", {}))
            self._on_model(self.state.ss_model)
            self._refresh_images()
            self.state.ss_connected = True

        self.state.ss_connected = False
        self._action(f"connect to {self.state.ss_url}", go)

    def _refresh_images(self):
        self.state.ss_images = [{"id": im["id"], "title": im["id"] + (f" ({', '.join(im['labels'])})"
                                                                      if im["labels"] else "")}
                                for im in self.session.images()]

    def open_image(self, image_id: str | None = None):
        self._take(ss_image=image_id)
        image_id = self.state.ss_image
        self._release_views()
        if self._action(f"open {image_id}", self.session.open_image, image_id):
            self.state.ss_image = image_id
            self._show_case()

    def _release_views(self):
        """Views and editor let go of the open image's nodes (before they leave the scene)."""
        self._bind_editor(None)
        dm = self.slicer.display_manager
        dm.show_volume_in_slice_background(None)
        dm.show_volume_in_slice_foreground(None)
        vr = self.slicer.volume_rendering
        for node in self.session.channels:
            if vr.has_vr_display_node(node):
                vr.get_vr_display_node(node).SetVisibility(False)

    def infer(self, model=None, attribution=None, target=None, steps=None, outputs=None, at=None):
        """Run the chosen model on the open image (all its outputs; attribution maps when a method is chosen and
        the model offers them, see /info models.<name>.config), of the target class or region (WT, TC, ET) summed
        over the voxels labelled so, or at the voxel under the cursor (`at` "cursor": its world point, which the
        server places on the grid the model saw)."""
        self._take(ss_model=model, ss_attribution=attribution, ss_attr_target=target, ss_attr_steps=steps,
                   ss_outputs=outputs, ss_attr_at=at)
        model, method = self.state.ss_model, self.state.ss_attribution
        options = {}
        config = self.session.logic.info.get("models", {}).get(model, {}).get("config", {})
        attributions = bool(method and "attribution" in config)
        at_cursor = attributions and self.state.ss_attr_at == "cursor"
        if attributions:
            point = self._probe_ras if at_cursor else None
            options = {**self.session.logic.attribution_options(method, self.state.ss_attr_target, point),
                       "attribution_steps": int(self.state.ss_attr_steps or 4)}
        outputs = [o.strip() for o in str(self.state.ss_outputs or "").split(",") if o.strip()] or None

        def run():
            from .session import ServerError

            if at_cursor and self._probe_ras is None:
                raise ServerError("point at the image first: the map explains the voxel under the cursor")
            return self.session.infer(model, outputs, **options)

        if self._action(f"{model} on {self.session.image_id}", run):
            self._show_case()

    def open_bundle(self, path=None):
        self._take(ss_bundle_path=path)
        if self._action("open bundle", self.session.open_bundle, self.state.ss_bundle_path):
            self._show_case()

    def next_sample(self, strategy=None):
        self._take(ss_strategy=strategy)
        image_id = self._action(f"next sample ({self.state.ss_strategy})", self.session.next_sample,
                                self.state.ss_strategy)
        if image_id is True:  # the strategy found nothing
            self.state.ss_status = "next sample: the strategy suggests no image (all labelled?)"
        elif image_id:
            self.open_image(image_id)

    def submit(self):
        if self._action(f"submit the label of {self.session.image_id}", self.session.submit):
            self.state.ss_submitted += 1
            self._refresh_images()

    # ------------------------------------------------------------------ training
    def train(self, model=None, epochs=None):
        self._take(ss_model=model, ss_epochs=epochs)
        epochs = int(self.state.ss_epochs or 1)
        if self._action(f"start training {self.state.ss_model}", self.session.train, self.state.ss_model, epochs):
            self.state.ss_training = "SUBMITTED"
            if self._training_task is None or self._training_task.done():
                self._training_task = asyncio.ensure_future(self._watch_training())

    async def _watch_training(self):
        from .session import message

        while True:
            await asyncio.sleep(1.0)
            try:
                t = self.session.training()
            except Exception as e:  # the server went away: say so and stop watching
                with self.state:
                    self.state.ss_training = f"cannot read the training status: {message(e)}"
                return
            with self.state:
                frac = f" {t.done}/{t.total} epochs" if t.total else ""
                self.state.ss_training = f"{t.state}{frac}"
            if not t.running:
                return

    # ------------------------------------------------------------------ display
    def _show_case(self):
        """Background modality, label, overlays, tables, plots, metrics of the open image and bundle."""
        t0 = time.time()
        s, sess = self.state, self.session
        s.ss_notes = list(sess.notes)
        s.ss_overlays = [{"value": NONE, "title": "none"}] + [
            {"value": ov.name, "title": ov.name + (f" [{ov.unit}]" if ov.unit else "")} for ov in sess.overlays()]
        if s.ss_overlay not in [o["value"] for o in s.ss_overlays]:
            s.ss_overlay = NONE
        tables = sess.tables()
        s.ss_tables_html = "".join(render.table_html(h, r, caption=name) for name, (h, r) in tables.items())
        metrics = sess.metrics()
        s.ss_metrics_html = (render.table_html(["output", "metric", "value"], metrics, caption="explanation quality")
                             if metrics else "")
        s.ss_plots = [{"name": n, "src": render.png_data_url(png)} for n, png in sess.plots().items()]
        self._on_background(s.ss_background)
        self._on_overlay(s.ss_overlay)
        label = sess.label_node()
        if label is not None:
            self._on_label_visible(s.ss_label_visible)
            self._bind_editor(label)
        self.slicer.display_manager.reset_views()
        centre = sess.label_centre()
        if centre is not None:  # the slice views through the tumour, centred on it
            for i in range(self.slicer.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
                self.slicer.scene.GetNthNodeByClass(i, "vtkMRMLSliceNode").JumpSliceByCentering(*centre)
        self._views_render(three_d=True)
        s.ss_scene_nodes = self._scene_nodes()
        s.ss_case_shown += 1
        log.info("case %s shown in %.2f s", sess.image_id, time.time() - t0)

    def _scene_nodes(self) -> int:
        """Nodes in the scene but the colour nodes (palettes shared by every image, made once): what the tests
        watch to see that no image leaves nodes behind."""
        scene = self.slicer.scene
        return scene.GetNumberOfNodes() - scene.GetNumberOfNodesByClass("vtkMRMLColorNode")

    def _views_render(self, three_d: bool = False):
        """Ask the slice views (and the 3D view when what it shows changed) for a new frame; requests coalesce.
        trame-rca renders, captures and pushes every frame in the server's asyncio loop, so a frame is on the page
        as soon as the loop is free, and no view may hold the loop long: a full-size 3D frame (Slicer's volume
        rendering on Mesa llvmpipe) held it 1.2-2.5 s, rendered twice per change (interactive and still quality),
        and side-panel changes then seemed to wait for the mouse. Hence THREE_D_PIXELS, FRAME_QUALITY, and no 3D
        frame for a change of the slice views alone."""
        views = self.slicer.view_manager.get_views() if three_d else self.slicer.view_manager.get_slice_views()
        for view in views:
            view.schedule_render()

    def _on_background(self, name):
        node = self.session.channel(name)
        if node is None:
            return
        dm = self.slicer.display_manager
        dm.show_volume_in_slice_background(node)
        vr = self.slicer.volume_rendering
        for other in self.session.channels:
            if other is not node and vr.has_vr_display_node(other):
                vr.get_vr_display_node(other).SetVisibility(False)
        disp = vr.get_vr_display_node(node) if vr.has_vr_display_node(node) else vr.create_display_node(node, "MR-Default")
        disp.SetVisibility(True)
        dm.set_node_visible_in_group(node)
        self._views_render(three_d=True)

    def _on_overlay(self, name):
        from .session import S

        s = self.state
        t0 = time.time()
        overlays = {ov.name: ov for ov in self.session.overlays()}
        for ov in overlays.values():
            S.set_visible(ov.node, False)
        ov = overlays.get(name)
        self.slicer.display_manager.show_volume_in_slice_foreground(ov.node if ov else None)
        if ov is None:
            s.ss_overlay_info, s.ss_overlay_bar, s.ss_overlay_lo, s.ss_overlay_hi = "", "", "", ""
        else:
            disp = ov.node.GetDisplayNode()
            for view in self.slicer.view_manager.get_slice_views():
                view.set_foreground_opacity(float(s.ss_opacity))
            s.ss_overlay_info = ov.description + (f" (unit: {ov.unit})" if ov.unit else "")
            s.ss_overlay_bar = render.colour_bar_css(render.colour_stops(disp.GetColorNode()))
            s.ss_overlay_lo, s.ss_overlay_hi = render.fmt(disp.GetWindowLevelMin()), render.fmt(disp.GetWindowLevelMax())
        self._views_render()
        s.ss_switched += 1
        log.info("overlay %s shown in %.3f s", name, time.time() - t0)

    def _on_opacity(self, opacity):
        for view in self.slicer.view_manager.get_slice_views():
            view.set_foreground_opacity(float(opacity))
        self._views_render()

    def _on_label_visible(self, visible):
        label = self.session.label_node()
        if label is not None:
            disp = label.GetDisplayNode()
            disp.SetVisibility(bool(visible))
            segmentation = label.GetSegmentation()
            for i in range(segmentation.GetNumberOfSegments()):  # what the slice views' segment pipeline follows
                disp.SetSegmentVisibility(segmentation.GetNthSegmentID(i), bool(visible))
            self._views_render()
        log.info("label %s", "shown" if visible else "hidden")

    # ------------------------------------------------------------------ segment editor
    def _bind_editor(self, label):
        """Edit `label` over the shown modality (the threshold's source image)."""
        editor = self.slicer.segmentation_editor
        editor.deactivate_effect()
        self.state.ss_edit_effect = "none"
        source = self.session.channel(self.state.ss_background) if label is not None else None
        if label is not None:
            editor.set_active_segmentation(label, source)
        self._editor, self._editor_source = label, source

    def set_effect(self, name: str, segment: str = "", brush=None):
        """Paint / Erase / Threshold with the segment editor in the slice views ('none' stops editing)."""
        self._take(ss_brush=brush)
        editor = self.slicer.segmentation_editor
        if name == "none" or self._editor is None:
            editor.deactivate_effect()
            self.state.ss_edit_effect = "none"
            if self._editor is None and name != "none":
                self.state.ss_error = "nothing to edit: run a model first (its label is what you edit)"
            return None
        if name == "threshold" and self._editor_source is not self.session.channel(self.state.ss_background):
            self._bind_editor(self._editor)  # the threshold reads the modality shown now
        if segment:
            sid = self._editor.GetSegmentation().GetSegmentIdBySegmentName(segment)
            if sid:
                editor.set_active_segment_id(sid)
        effect = editor.set_active_effect_type(_effect_type(name))
        if effect is not None and name in ("paint", "erase"):
            from trame_slicer.segmentation.paint_effect_parameters import BrushDiameterMode

            effect.set_brush_diameter(float(self.state.ss_brush), BrushDiameterMode.Absolute)
        if effect is not None and name == "threshold":
            self._threshold_range(effect)
        self.state.ss_edit_effect = name
        return effect

    def _threshold_range(self, effect):
        """The threshold's range from the page, the source image's whole range where the page has none."""
        import math

        from vtkmodules.vtkCommonCore import VTK_DOUBLE, VTK_FLOAT

        s = self.state
        image = self._editor_source.GetImageData()
        lo, hi = image.GetScalarRange()
        s.ss_thr_image_range = f"{s.ss_background} ranges {lo:.6g} to {hi:.6g}"
        if not _is_number(s.ss_thr_min) or not _is_number(s.ss_thr_max):
            s.ss_thr_min, s.ss_thr_max = float(lo), float(hi)
        lo, hi = float(s.ss_thr_min), float(s.ss_thr_max)
        if image.GetScalarType() not in (VTK_FLOAT, VTK_DOUBLE):  # integers: VTK would truncate the bounds
            lo, hi = math.ceil(lo), math.floor(hi)
        effect.set_threshold_min_max_values((lo, hi))

    def _on_threshold(self):
        effect = self.slicer.segmentation_editor.active_effect
        if self.state.ss_edit_effect == "threshold" and effect is not None:
            self._threshold_range(effect)  # the preview follows the range

    def apply_threshold(self, lo=None, hi=None, segment=None):
        """Add the voxels of the shown modality within [lo, hi] to the segment (the other segments lose them)."""
        self._take(ss_thr_min=lo, ss_thr_max=hi, ss_paint_segment=segment)

        def go():
            if not (_is_number(self.state.ss_thr_min) and _is_number(self.state.ss_thr_max)):
                raise ValueError("the threshold needs a minimum and a maximum")
            effect = self.set_effect("threshold", self.state.ss_paint_segment)
            if effect is None:
                raise ValueError(self.state.ss_error or "the threshold tool is not available")
            effect.apply()

        self._action(f"threshold {self.state.ss_background} [{self.state.ss_thr_min}, {self.state.ss_thr_max}] "
                     f"into {self.state.ss_paint_segment}", go)

    # ------------------------------------------------------------------ probe
    def _watch_cursor(self):
        from slicer import vtkMRMLCrosshairNode

        crosshair = self.slicer.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:
            crosshair.AddObserver(vtkMRMLCrosshairNode.CursorPositionModifiedEvent, self._on_cursor)

    def _on_cursor(self, crosshair, *_):
        ras = [0.0, 0.0, 0.0]
        if not crosshair.GetCursorPositionRAS(ras):
            return
        ijk = self.session.voxel(ras)
        if ijk is None:
            return
        self._probe_ras = [float(v) for v in ras]
        if ijk == self._probe_ijk:
            return
        self._probe_ijk = ijk
        rows = self.session.probe(ras)
        with self.state:
            self.state.ss_probe_html = render.table_html(["map", "value", "unit / meaning"], rows,
                                                         caption=f"voxel {ijk}")


def _three_d_view_factory(server):
    """trame-slicer's 3D view factory, its views rendering at most THREE_D_PIXELS without multisampling."""
    from trame_slicer.app.ui import create_vertical_view_gutter_ui
    from trame_slicer.rca_view.rca_view_factory import RemoteThreeDViewFactory

    class SmallThreeDViewFactory(RemoteThreeDViewFactory):
        def _create_view(self, view, scene, app_logic):
            rca_view = super()._create_view(view, scene, app_logic)
            rca_view.view_adapter.max_pixel_count = THREE_D_PIXELS
            rca_view.slicer_view.render_window().SetMultiSamples(0)
            return rca_view

    return SmallThreeDViewFactory(server, interactive_quality=FRAME_QUALITY, blur_fps=10.0,
                                  populate_view_ui_f=create_vertical_view_gutter_ui)


def _effect_type(name: str):
    from trame_slicer.segmentation import (
        SegmentationEffectErase,
        SegmentationEffectPaint,
        SegmentationEffectThreshold,
    )

    return {"paint": SegmentationEffectPaint, "erase": SegmentationEffectErase,
            "threshold": SegmentationEffectThreshold}[name]


def _is_number(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def serve(url: str, token: str = "", host: str = "127.0.0.1", port: int = 8080, model: str = "",
          open_browser: bool = False) -> None:
    """Build the page and serve it until interrupted."""
    app = ReviewApp(url=url, token=token, model=model)
    if url:
        app.connect()
    log.info("SparseSight review on http://%s:%d (server %s)", host, port, url or "-")
    app.server.start(host=host, port=port, open_browser=open_browser, show_connection_info=False)

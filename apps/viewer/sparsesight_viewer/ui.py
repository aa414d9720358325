"""The page's widgets (trame vuetify3 + plain HTML controls with `ss-...` ids), bound to a ReviewApp."""
from __future__ import annotations

CSS = """
.ss-panel { font-size: 13px; }
.ss-panel select, .ss-panel input { background: #fff; color: #000; border: 1px solid #999; padding: 2px 4px;
  max-width: 100%; }
.ss-table { border-collapse: collapse; margin: 4px 0; font-size: 12px; }
.ss-table caption { text-align: left; font-weight: bold; }
.ss-table td, .ss-table th { border: 1px solid #777; padding: 1px 5px; }
.ss-error { color: #ff6e6e; font-weight: bold; white-space: pre-wrap; }
.ss-note { color: #ffc857; }
.ss-plot { max-width: 100%; background: #fff; }
"""


def build_page(app) -> None:
    from trame.ui.vuetify3 import SinglePageWithDrawerLayout
    from trame.widgets import client, html
    from trame.widgets import vuetify3 as v

    from sparsesight import CLASSES

    def button(text, fn, id_, disabled=None, **kw):
        return v.VBtn(text, id=id_, click=fn, size="small", classes="ma-1", variant="tonal",
                      disabled=disabled or ("ss_busy",), **kw)

    with SinglePageWithDrawerLayout(app.server, theme="dark") as layout:
        layout.title.set_text("SparseSight review")
        layout.footer.hide()
        layout.drawer.width = 430
        with layout.toolbar:
            v.VSpacer()
            html.Div("{{ ss_status }}", id="ss-status", classes="text-caption mx-2")
        with layout.drawer, html.Div(classes="ss-panel pa-2"):
            client.Style(CSS)
            html.Div("{{ ss_error }}", id="ss-error", classes="ss-error", v_show="ss_error")
            html.Span("{{ ss_actions }}", id="ss-actions", style="display: none")
            html.Span("{{ ss_scene_nodes }}", id="ss-scene-nodes", style="display: none")
            html.Div("{{ n }}", v_for="n in ss_notes", classes="ss-note ss-notes")
            # server
            html.Div("Server", classes="text-subtitle-2 mt-1")
            html.Input(id="ss-url", v_model=("ss_url",), placeholder="http://127.0.0.1:8000", style="width: 100%")
            html.Input(id="ss-token", v_model=("ss_token",), type="password", placeholder="API token (optional)",
                       style="width: 100%")
            button("Connect", (app.connect, "[ss_url, ss_token]"), "ss-connect")
            # image
            with html.Div(v_show="ss_connected"):
                html.Div("Image", classes="text-subtitle-2 mt-2")
                with html.Select(id="ss-image", v_model=("ss_image",), style="width: 70%"):
                    html.Option("{{ im.title }}", v_for="im in ss_images", key="im.id", value=("im.id",))
                button("Open", (app.open_image, "[ss_image]"), "ss-open")
                button("Next sample", (app.next_sample, "[ss_strategy]"), "ss-next")
                with html.Select(id="ss-strategy", v_model=("ss_strategy",)):
                    html.Option("{{ st }}", v_for="st in ss_strategies", key="st", value=("st",))
                html.Div("Model", classes="text-subtitle-2 mt-2")
                with html.Select(id="ss-model", v_model=("ss_model",)):
                    html.Option("{{ m }}", v_for="m in ss_models", key="m", value=("m",))
                html.Div("attribution map")
                with html.Select(id="ss-attribution", v_model=("ss_attribution",)):
                    for value, title in (("", "none"), ("gradient", "gradient"), ("ig", "integrated gradients"),
                                         ("smoothgrad", "SmoothGrad"), ("xrai", "XRAI")):
                        html.Option(title, value=value)
                html.Span(" of ")
                with html.Select(id="ss-attr-target", v_model=("ss_attr_target",)):
                    # the model's classes and, when it has the three tumour classes, the BraTS regions (/info)
                    html.Option("{{ t }}", v_for="t in ss_attr_targets", key="t", value=("t",))
                html.Span(" in ")
                with html.Select(id="ss-attr-at", v_model=("ss_attr_at",)):
                    html.Option("the voxels labelled so", value="predicted")
                    html.Option("the voxel at the cursor", value="cursor")
                html.Span(" steps ")
                html.Input(id="ss-attr-steps", type="number", v_model_number=("ss_attr_steps",), style="width: 3em")
                html.Input(id="ss-outputs", v_model=("ss_outputs",), style="width: 100%",
                           placeholder="outputs, e.g. label,components:T1ce,params (empty: all)")
                button("Run inference", (app.infer, "[ss_model, ss_attribution, ss_attr_target, ss_attr_steps, "
                                                    "ss_outputs, ss_attr_at]"), "ss-infer")
                html.Input(id="ss-bundle-path", v_model=("ss_bundle_path",), placeholder="bundle .zip on this machine",
                           style="width: 70%")
                button("Open bundle", (app.open_bundle, "[ss_bundle_path]"), "ss-open-bundle")
            # display
            with html.Div(v_show="ss_case_shown"):
                html.Div("Display", classes="text-subtitle-2 mt-2")
                html.Span("image ")
                with html.Select(id="ss-background", v_model=("ss_background",)):
                    for m in ("FLAIR", "T1", "T1ce", "T2"):
                        html.Option(m, value=m)
                with html.Label(classes="ml-2"):
                    html.Input(id="ss-label-visible", type="checkbox", v_model=("ss_label_visible",))
                    html.Span(" label")
                html.Div("overlay")
                with html.Select(id="ss-overlay", v_model=("ss_overlay",), style="width: 100%"):
                    html.Option("{{ o.title }}", v_for="o in ss_overlays", key="o.value", value=("o.value",))
                with html.Div(v_show="ss_overlay_bar"):
                    html.Div(id="ss-colour-bar", style=("ss_overlay_bar",))
                    with html.Div(style="display: flex; justify-content: space-between"):
                        html.Span("{{ ss_overlay_lo }}", id="ss-bar-lo")
                        html.Span("{{ ss_overlay_hi }}", id="ss-bar-hi")
                    html.Div("{{ ss_overlay_info }}", id="ss-overlay-info", classes="text-caption")
                html.Span("opacity ")
                html.Input(id="ss-opacity", type="range", min=0, max=1, step=0.05, v_model_number=("ss_opacity",))
                # editing
                html.Div("Edit the label (segment editor)", classes="text-subtitle-2 mt-2")
                html.Span("brush (mm) ")
                html.Input(id="ss-brush", type="number", v_model_number=("ss_brush",), style="width: 4em")
                button("Paint", (app.set_effect, "['paint', ss_paint_segment, ss_brush]"), "ss-paint")
                button("Erase", (app.set_effect, "['erase', '', ss_brush]"), "ss-erase")
                button("Stop", (app.set_effect, "['none', '']"), "ss-stop")
                with html.Select(id="ss-paint-segment", v_model=("ss_paint_segment",)):
                    for name in (v for k, v in sorted(CLASSES.items()) if k):  # the stored labels' classes
                        html.Option(name, value=name)
                with html.Div():
                    button("Threshold", (app.set_effect, "['threshold', ss_paint_segment]"), "ss-threshold")
                    html.Input(id="ss-thr-min", type="number", v_model_number=("ss_thr_min",), style="width: 5em")
                    html.Span(" to ")
                    html.Input(id="ss-thr-max", type="number", v_model_number=("ss_thr_max",), style="width: 5em")
                    button("Apply", (app.apply_threshold, "[ss_thr_min, ss_thr_max, ss_paint_segment]"),
                           "ss-thr-apply")
                    html.Div("{{ ss_thr_image_range }}", v_show="ss_thr_image_range",
                             id="ss-thr-range", classes="text-caption")
                html.Div("editing: {{ ss_edit_effect }}", id="ss-edit-effect", classes="text-caption")
                button("Submit label", app.submit, "ss-submit")
                # training
                html.Div("Training", classes="text-subtitle-2 mt-2")
                html.Span("epochs ")
                html.Input(id="ss-epochs", type="number", v_model_number=("ss_epochs",), style="width: 4em")
                button("Start training", (app.train, "[ss_model, ss_epochs]"), "ss-train")
                html.Div("{{ ss_training }}", id="ss-training", classes="text-caption")
                # what the voxel under the mouse holds
                html.Div("Probe (move the mouse over a slice view)", classes="text-subtitle-2 mt-2")
                html.Div(id="ss-probe", v_html=("ss_probe_html",))
                html.Div(id="ss-metrics", v_html=("ss_metrics_html",))
                html.Div(id="ss-tables", v_html=("ss_tables_html",))
                with html.Div(v_for="p in ss_plots", key="p.name", classes="ss-plots"):
                    html.Div("{{ p.name }}", classes="text-caption")
                    html.Img(src=("p.src",), classes="ss-plot")
        with layout.content:
            with html.Div(id="ss-views", style="position: relative; width: 100%; height: calc(100vh - 64px);"):
                app.layout_manager.initialize_layout_grid(layout)
    app.layout = layout

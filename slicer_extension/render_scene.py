"""Render what the SparseSight module puts in a scene, without the Slicer GUI (a developer tool, run in the venv).

    .venv/bin/python slicer_extension/render_scene.py out/demo/mlcsc_case_010.zip \
        out/demo/datastore/case_010.nii.gz docs/slicer_scene.png \
        --outputs probability/oedema probability/enhancing reconstruction/T1ce

Builds the MRML scene on slicer-core exactly as the module does (SparseSightLib.scene), then draws one axial slice
of the input and of each kind of output with the colours and windows stored in the MRML display nodes (colour
node lookup tables, window/level, segment colours), so the picture shows the module's display choices.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "SparseSight"))

from SparseSightLib import scene as S  # noqa: E402
from SparseSightLib.logic import MODALITIES  # noqa: E402


def lut_colormap(color_node):
    """The colour node's lookup table as a matplotlib colormap."""
    from matplotlib.colors import ListedColormap

    lut = color_node.GetLookupTable()
    return ListedColormap([lut.GetTableValue(i)[:3] for i in range(lut.GetNumberOfTableValues())])


def pick(nodes: dict) -> list:
    """One output of each display kind the bundle has: probability, signed, other scalars (components first)."""
    scalars = [(n, v) for n, v in nodes.items() if v.IsA("vtkMRMLScalarVolumeNode") and not v.IsA("vtkMRMLVectorVolumeNode")]
    by_map = {}
    for name, node in scalars:
        cmap = node.GetDisplayNode().GetColorNode().GetName()
        by_map.setdefault(cmap, []).append(name)
    chosen = []
    for names in by_map.values():
        names.sort(key=lambda n: (not n.startswith("component/"), "enhancing" not in n, n))
        chosen.append(names[0])
    return chosen[:4]


def render(bundle, image, out, slice_index=None, outputs=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scene = S.new_scene()
    channels = S.read_image(scene, image, "input", MODALITIES)
    run = S.load_bundle(scene, bundle)
    with tempfile.TemporaryDirectory() as tmp:
        label_file = S.export_label(scene, run.nodes["label"], Path(tmp) / "label.nii.gz")
        label = S.array_from_volume(S.read_volume(scene, label_file, "label", "vtkMRMLLabelMapVolumeNode"))
    k = slice_index if slice_index is not None else int(np.argmax((label > 0).sum((0, 1))))
    t1ce = S.array_from_volume(channels[MODALITIES.index("T1ce")])[:, :, k]
    lo, hi = np.percentile(t1ce, [1, 99])

    seg = run.nodes["label"].GetSegmentation()
    colours = {}
    for i in range(seg.GetNumberOfSegments()):
        s = seg.GetNthSegment(i)
        colours[s.GetName()] = s.GetColor()
    classes = {int(v): n for v, n in __import__("json").loads(run.nodes["label"].GetAttribute("SparseSight.classes")).items()}
    overlay = np.zeros(label.shape[:2] + (4,))
    for value, name in classes.items():
        overlay[label[:, :, k] == value] = (*colours[name], 0.55)

    names = list(outputs) if outputs else pick(run.nodes)
    fig, axes = plt.subplots(1, 2 + len(names), figsize=(3.1 * (2 + len(names)), 3.4))
    show = lambda ax, a, **kw: ax.imshow(np.rot90(a), **kw)  # noqa: E731 - anterior up
    show(axes[0], t1ce, cmap="gray", vmin=lo, vmax=hi)
    axes[0].set_title(f"input T1ce (slice {k})", fontsize=9)
    show(axes[1], t1ce, cmap="gray", vmin=lo, vmax=hi)
    show(axes[1], overlay)
    axes[1].set_title("segmentation: " + ", ".join(classes.values()), fontsize=7)
    for ax, name in zip(axes[2:], names):
        node = run.nodes[name]
        disp = node.GetDisplayNode()
        a = S.array_from_volume(node)[:, :, k]
        im = show(ax, a, cmap=lut_colormap(disp.GetColorNode()), vmin=disp.GetWindowLevelMin(),
                  vmax=disp.GetWindowLevelMax())
        ax.set_title(f"{name}\n{disp.GetColorNode().GetName()} [{disp.GetWindowLevelMin():.3g}, "
                     f"{disp.GetWindowLevelMax():.3g}]", fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_axis_off()
    m = run.manifest
    fig.suptitle(f"SparseSight module scene (slicer-core): {m['model']} {m['model_version'][:15]} on {m['image']}, "
                 f"{len(run.nodes)} outputs in one folder", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", help="result bundle (zip or folder)")
    ap.add_argument("image", help="the 4D input NIfTI the bundle was computed on")
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("--slice", type=int, default=None, help="axial slice (default: the one with most tumour)")
    ap.add_argument("--outputs", nargs="*", help="scalar outputs to draw (default: one per colour map)")
    args = ap.parse_args(argv)
    print(render(args.bundle, args.image, args.out, args.slice, args.outputs))


if __name__ == "__main__":
    main()

"""The README's measured figures are the ones the benchmarks wrote (bench/results/*.json), quoted exactly."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def section(title: str) -> str:
    """The README text under a heading (any level) up to the next heading of the same or a higher level."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"^(#+) {re.escape(title)}\n", text, re.M)
    assert m, f"README has no heading {title!r}"
    level = len(m.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, m.end())
    return text[m.end(): end.start() if end else len(text)]


def test_security_figures_are_those_of_the_reliability_bench():
    r = json.loads((ROOT / "bench" / "results" / "reliability.json").read_text())
    lat, bomb = r["info_latency"], r["gzip_bomb"]
    quoted = " ".join(section("Security and crash safety").split())  # line breaks read as spaces
    expected = [
        "python -m sparsesight.bench.reliability --trials 20",
        "bench/results/reliability.json",
        f"{r['trials']} kill -9 trials",
        f"{r['saves_acknowledged']} saves acknowledged",
        f"{r['labels_lost']} labels lost",
        f"/info p95 {round(lat['p95_s'] * 1000)} ms under {lat['infer_clients']} clients",
        f"answered {'/'.join(map(str, bomb['statuses']))}",
        f"+{round(bomb['max_peak_over_before_mib'])} MiB",
        f"peak {round(bomb['peak_rss_mib'])} MiB",
        f"inflates to {bomb['bomb_mib'] // 1024} GiB",
    ]
    assert [e for e in expected if e not in quoted] == []
    assert r["command"] == "python -m sparsesight.bench.reliability --trials 20"  # the run the README quotes
    assert "docs/SECURITY.md" in quoted


def test_explanation_figures_are_those_of_the_explanations_bench():
    from sparsesight.bench.explanations import markdown_table

    r = json.loads((ROOT / "bench" / "results" / "explanations.json").read_text())
    text = section("ML-CSC explanations, measured")
    assert r["command"] in " ".join(text.split()) and "bench/results/explanations.json" in text
    missing = [line for line in markdown_table(r) if line not in text]
    assert missing == [], "README's table differs from bench/results/explanations.json; rerun and paste"
    for name, m in r["models"].items():
        if "figure" in m:
            assert (ROOT / "bench" / "results" / m["figure"]).is_file(), name


def test_shipped_explanation_figures_are_those_of_the_recorded_run():
    """The explanations bench on the shipped checkpoints (the cards' held-out split): README table and figures."""
    from sparsesight import model_card
    from sparsesight.bench.explanations import markdown_table

    r = json.loads((ROOT / "bench" / "results" / "explanations_shipped" / "explanations.json").read_text())
    shipped = {m: model_card.read(ROOT / "apps" / "sparsesight" / "pretrained" / f"{m}.pt")["version"]
               for m in ("mlcsc", "sum")}
    assert {m: v["version"] for m, v in r["models"].items()} == shipped, "measured on other weights: rerun it"
    text = section("ML-CSC explanations, measured")
    flat = " ".join(text.split())
    assert r["command"] in flat and [line for line in markdown_table(r) if line not in text] == []
    m = r["models"]["mlcsc"]
    assert f"{m['inference_time_ratio']:.2f}× UNet's time in this run" in flat
    loc = m["summary"]["localisation_truth"]
    assert (f"oedema {loc['oedema']:.1f}, non-enhancing core {loc['non-enhancing core']:.1f}, enhancing "
            f"{loc['enhancing']:.1f}") in flat
    flagged = [c["quality"]["localisation"]["per_class"]["oedema"]["localisation_ratio"] for c in m["cases"]
               if not c["quality"]["faithful"]]
    assert [f"{v:.2f}" for v in flagged] == ["4.98"] and "scores 4.98 (aim 5)" in flat
    assert f"WT {m['summary']['dice']['WT']:.3f}" in flat
    assert f"UNet {r['unet_inference_s']:.2f} s" in flat
    # SUM: the reconstruction measured is ED_0(x); ED_alpha(x) is measured as the output layer's signal
    s, sig = r["models"]["sum"]["summary"], r["models"]["sum"]["summary"]["output_signal"]
    assert f"misses the aim at worst by {s['relative_error_max']:.3f}" in flat
    assert f"with correlation ≥ {s['correlation_min'] - 0.005:.2f}" in flat
    assert sig["faithful_cases"] == len(r["models"]["sum"]["cases"]) and "passes the map checks on both cases" in flat
    assert (f"energy in the brain ≥ {sig['energy_in_brain_min']:.3f}, lattice ≤ {sig['lattice_vs_image_max']:.2f}× "
            f"the image's") in flat
    assert (f"removed {sig['removed_by_shrinkage_min']:.3f}–{sig['removed_by_shrinkage_max']:.3f} of ED_0(x) per "
            "modality") in flat
    per = [m for c in r["models"]["sum"]["cases"] for m in c["quality"]["reconstruction"]["per_modality"].values()]
    assert sum(m["relative_error"] > 0.15 for m in per) == 6 and "(FLAIR, T1 and T1ce miss it, T2 meets it)" in flat
    older = [json.loads((ROOT / "bench" / "results" / f).read_text())["models"]["sum"]["summary"]["relative_error_max"]
             for f in ("explanations.json", "explanations_before_readout_factor.json")]
    assert f"(relative error {min(older):.2f}–{max(older):.2f})" in flat


def test_steps_trade_off_figures_are_those_of_the_recorded_run():
    """Issue 16's inference-time trade-off: the README quotes the steps run's table, time ratios and command."""
    from sparsesight.bench.explanations import markdown_table, steps_sweep

    r = json.loads((ROOT / "bench" / "results" / "steps_tradeoff" / "explanations.json").read_text())
    assert [row["steps"] for row in steps_sweep(r)] == [1, 2, 4] and r["steps_sweep"] == steps_sweep(r)
    flat = " ".join(section("ML-CSC explanations, measured").split())
    assert r["command"] in flat and [line for line in markdown_table(r) if line not in flat] == []
    m = r["models"]
    assert (f"at {m['mlcsc_steps2']['inference_time_ratio']:.2f}× UNet's time against "
            f"{m['mlcsc']['inference_time_ratio']:.2f}×") in flat
    assert f"One step meets the time aim ({m['mlcsc_steps1']['inference_time_ratio']:.2f}×)" in flat
    assert f"UNet {r['unet_inference_s']:.2f} s" in flat
    assert (ROOT / "bench" / "results" / "steps_tradeoff" / "steps_sweep.png").is_file()


def test_two_step_trial_is_that_of_its_card_and_its_timed_run():
    """Issue 16: the full-recipe trial with T x M = 2 (bench/results/steps2_trial) beside the shipped four steps."""
    from sparsesight import model_card
    from sparsesight.bench.explanations import markdown_table

    shipped = model_card.read(ROOT / "apps" / "sparsesight" / "pretrained" / "mlcsc.pt")
    trial = model_card.read(ROOT / "bench" / "results" / "steps2_trial" / "mlcsc.pt")
    assert (trial["config"]["T"], trial["config"]["M"], shipped["config"]["T"] * shipped["config"]["M"]) == (1, 2, 4)
    assert {k: v for k, v in trial["config"].items() if k not in ("T", "M")} == {
        k: v for k, v in shipped["config"].items() if k not in ("T", "M")}
    text = section("ML-CSC explanations, measured")
    flat = " ".join(text.split())
    cards = {"mlcsc (4 steps, shipped)": shipped, "mlcsc, 2 steps (CPU trial)": trial}
    lines = model_card.readme_table(cards) + model_card.off_grid_case_table(cards)
    assert [line for line in lines if line not in text] == [], "README's two-step trial tables differ from the cards"
    assert f"`{trial['training']['command']}`, {trial['training']['seconds']:,.0f} s" in flat
    def gap(split, k):  # of the figures as the tables show them (3 decimals), with the README's minus sign
        v = round(trial["evaluation"]["dice"][split][k], 3) - round(shipped["evaluation"]["dice"][split][k], 3)
        return f"{v:.3f}".replace("-", "−")

    assert f"held-out WT / TC / ET {' / '.join(gap('held-out', k) for k in ('WT', 'TC', 'ET'))}" in flat
    assert f"off the grid ET {gap('off-grid: 4 varied phantoms of seed 2000', 'ET')}" in flat
    r = json.loads((ROOT / "bench" / "results" / "steps2_trial" / "explanations" / "explanations.json").read_text())
    assert {m: v["version"] for m, v in r["models"].items()} == {"mlcsc": shipped["version"],
                                                                  "mlcsc_steps2": trial["version"]}
    assert r["command"] in flat and [line for line in markdown_table(r) if line not in text] == []
    m = r["models"]
    assert (f"Time: {m['mlcsc_steps2']['inference_time_ratio']:.2f}× UNet's against "
            f"{m['mlcsc']['inference_time_ratio']:.2f}× in this run") in flat
    before = json.loads((ROOT / "bench" / "results" / "explanations_shipped_before_speedups.json").read_text())
    assert "bench/results/explanations_shipped_before_speedups.json" in flat
    assert (f"made the shipped ML-CSC {m['mlcsc']['inference_s']:.1f} s on this case against "
            f"{before['models']['mlcsc']['inference_s']:.1f} s") in flat
    assert f"({r['unet_inference_s']:.2f} s against {before['unet_inference_s']:.2f} s)" in flat
    assert f"{m['mlcsc']['inference_time_ratio']:.2f}× in the two-step trial below (its own run)" in flat


def test_earlier_explanation_figures_are_those_of_the_recorded_run():
    from sparsesight.bench.explanations import markdown_table

    r = json.loads((ROOT / "bench" / "results" / "explanations_before_readout_factor.json").read_text())
    assert r["models"]["mlcsc"]["config"]["strides"] == [1, 2, 2, 1]  # the run before the finer read-out grid
    text = section("ML-CSC explanations, measured")
    assert [line for line in markdown_table(r) if line not in text] == []
    assert "bench/results/explanations_before_readout_factor.json" in text


def test_demo_time_figures_are_those_of_the_explanations_bench():
    m = json.loads((ROOT / "bench" / "results" / "explanations.json").read_text())["models"]
    text = " ".join((ROOT / "README.md").read_text().split())
    assert f"took {round(m['mlcsc_beta0']['train']['seconds'])} s in the explanations benchmark" in text
    assert f"10 epochs of SUM took {round(m['sum']['train']['seconds'])} s" in text


def test_shipped_weights_figures_are_those_of_the_model_cards_and_the_recorded_demo():
    from sparsesight import model_card

    folder = ROOT / "apps" / "sparsesight" / "pretrained"
    cards = {m: model_card.read(folder / f"{m}.pt") for m in ("mlcsc", "sum")}
    assert all(cards.values()), "shipped weights without a card"
    for m, card in cards.items():  # the shipped files are the ones their cards describe
        assert card["sha256"] == model_card.sha256_file(folder / f"{m}.pt"), m
        assert (folder / f"{m}.card.md").read_text() == model_card.markdown(card), m
    text = section("Shipped weights")
    missing = [line for line in model_card.readme_table(cards) if line not in text]
    assert missing == [], "README's table differs from the model cards; paste model_card.readme_table(cards)"
    demo = json.loads((ROOT / "bench" / "results" / "demo.json").read_text())
    flat = " ".join(text.split())
    assert f"took {round(demo['seconds'])} s" in flat and "bench/results/demo.json" in flat
    readme_all = " ".join((ROOT / "README.md").read_text().split())
    assert f"The demo's {round(demo['seconds'])} s (bench/results/demo.json) is inside the 3-minute aim" in readme_all
    bench_readme = " ".join((ROOT / "bench" / "README.md").read_text().split())
    assert f"`make demo` took {round(demo['seconds'])} s with it (bench/results/demo.json)" in bench_readme
    # SUM's explanation quality as the recorded demo printed it: flagged for ED_0(x), not for ED_alpha(x)
    q = demo["models"]["sum"]["explanation_quality"]
    rec, sig = q["reconstruction"], q["output_signal"]
    missed = [mod for mod, m in rec.items() if m["relative_error"] > 0.15]
    assert q["faithful"] is False and missed == ["FLAIR", "T1", "T1ce"] and all(f.startswith(tuple(missed))
                                                                                 for f in q["flags"])
    assert ("misses the reconstruction aim in FLAIR, T1 and T1ce (relative error "
            + ", ".join(f"{rec[m]['relative_error']:.3f}" for m in missed)
            + f"; T2 {rec['T2']['relative_error']:.3f})") in flat
    assert f"correlates with the image at r ≥ {min(m['correlation'] for m in rec.values()) - 5e-4:.3f}" in flat
    removed = [m["removed_by_shrinkage"] for m in sig.values()]
    assert f"the shrinkages removed {min(removed) - 0.005:.2f}–{max(removed):.2f} of ED_0(x)" in flat
    assert all(abs(m["tumour_correlation"]) > abs(m["image_tumour_correlation"]) for m in sig.values())
    assert all(f"{mod} {sig[mod]['tumour_correlation']:.3f} against {sig[mod]['image_tumour_correlation']:.3f}" in flat
               for mod in ("FLAIR", "T2"))
    assert demo["models"]["mlcsc"]["explanation_quality"]["faithful"] is True
    code = demo["models"]["mlcsc"]["explanation_quality"]["code_localisation"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"code energy on held-out case 0: oedema {code['oedema']['localisation_ratio']:.0f}, core "
            f"{code['non-enhancing core']['localisation_ratio']:.0f}, enhancing "
            f"{code['enhancing']['localisation_ratio']:.0f})") in readme
    for m, r in demo["models"].items():
        assert r["differs"] == [], f"the recorded demo's {m} Dice differ from its card"
        for region, v in r["dice"].items():
            assert abs(v - cards[m]["evaluation"]["dice"]["held-out"][region]) <= 0.02, (m, region)


def test_shipped_weights_recipe_is_that_of_their_cards():
    """What the README says about how the shipped weights were made (GPU, epochs from the probe, training time) is
    what their cards recorded; the weights shipped before keep their table (bench/results/shipped_light_cpu)."""
    from sparsesight import model_card

    folder = ROOT / "apps" / "sparsesight" / "pretrained"
    cards = {m: model_card.read(folder / f"{m}.pt") for m in ("mlcsc", "sum")}
    t = {m: c["training"] for m, c in cards.items()}
    flat = " ".join(section("Shipped weights").split())
    for m, tr in t.items():
        assert tr["device"] == "cuda" and tr["config"]["augment"] == "full", m
        assert f"--epochs {tr['epochs']}" in tr["command"] and f"--epochs {tr['epochs']}" in flat, m
    probe = [t[m]["epochs_from_probe"]["seconds_per_epoch"] for m in ("mlcsc", "sum")]
    assert f"measured {probe[0]:.1f} s and {probe[1]:.1f} s per epoch" in flat
    assert f"training took {round(t['mlcsc']['seconds'])} s and {round(t['sum']['seconds'])} s" in flat
    assert f"--variety-cases {t['mlcsc']['command'].split('--variety-cases ')[1].split()[0]}" in flat
    old = {f"{m} (light, CPU)": model_card.read(ROOT / "bench" / "results" / "shipped_light_cpu" / f"{m}.pt")
           for m in ("mlcsc", "sum")}
    missing = [line for line in model_card.readme_table(old) if line not in section("Shipped weights")]
    assert missing == [], "README's table of the light CPU weights differs from their cards; paste readme_table"


def test_attribution_figures_are_those_of_the_recorded_attribution_bench():
    from sparsesight.bench.attribution import data_randomisation_table, markdown_table, sanity_table, shared_tables

    r = json.loads((ROOT / "bench" / "results" / "attribution.json").read_text())
    text = (ROOT / "bench" / "README.md").read_text()
    shared = shared_tables(r)
    assert len(shared) == 2 + 2 * 2 * 2 * 6, "every check's rows carry what their maps follow (rerun the checks)"
    missing = [line for line in markdown_table(r) + sanity_table(r) + data_randomisation_table(r) + shared
               if line not in text]
    assert missing == [], "bench/README.md's attribution tables differ from bench/results/attribution.json"
    assert r["weights"] == "shipped" and set(r["commands"]) == {"mlcsc", "sum"}
    # measured on the weights that ship today (a retrained model makes the figures stale)
    from sparsesight import model_card

    folder = ROOT / "apps" / "sparsesight" / "pretrained"
    shipped = {m: model_card.read(folder / f"{m}.pt")["version"] for m in ("mlcsc", "sum")}
    assert r["versions"] == shipped, "bench/results/attribution.json was measured on other weights: rerun it"
    # the picture of what the magnitudes share, of the same weights, with the figures the README reads off it
    dist = json.loads((ROOT / "bench" / "results" / "attribution_distance.json").read_text())
    assert {p["version"] for p in dist["profiles"]} == set(shipped.values())
    assert (ROOT / "bench" / "results" / "attribution_distance.png").stat().st_size > 10_000
    flat = " ".join(text.split())
    assert f"`{dist['command']}`" in flat
    at = {k: max(p["profile"][k] for p in dist["profiles"]) for k in (5, 8)}
    assert f"at most {at[5]:.3f} of its peak 5 voxels out and {at[8]:.3f} at 8 voxels" in flat
    assert {m: v["served_version"] for m, v in r["data_randomisation"]["null_models"].items()} == shipped
    readme = " ".join((ROOT / "README.md").read_text().split())
    cost = r["ig_cost"]
    assert f"IG {cost['mlcsc']['ratio']:.2f}× its floor on ML-CSC ({cost['sum']['ratio']:.2f}× on SUM)" in readme
    # the XRAI-against-IG figures of the summary row and of bench/README.md's bullet
    gain = {(g["model"], g["target"], g["method"]): g["deletion_gain"] for g in r["faithfulness"]}
    pair = {(m, t): f"{gain[(m, t, 'xrai')]:.2f} vs {gain[(m, t, 'ig')]:.2f}"
            for m in ("sum", "mlcsc") for t in ("enhancing", "oedema")}
    assert (f"XRAI ≥ IG on SUM (enhancing {pair[('sum', 'enhancing')]}, oedema {pair[('sum', 'oedema')]}), not on "
            f"ML-CSC ({pair[('mlcsc', 'enhancing')]}, {pair[('mlcsc', 'oedema')]})") in readme
    bench = " ".join(text.split())
    assert all(f"({v}" in bench for v in pair.values())


def test_whole_brain_figures_are_those_of_the_recorded_bench():
    r = json.loads((ROOT / "bench" / "results" / "microstructure_scale.json").read_text())["whole_brain"]["result"]
    run = max(r["runs"], key=lambda x: x["voxels"])
    assert run["voxels"] == r["white_matter_voxels"] and "extrapolated_whole_mask" not in r  # measured, not scaled
    text = " ".join((ROOT / "bench" / "README.md").read_text().split())
    for figure in (f"{r['white_matter_voxels']:,} white-matter voxels",
                   f"{run['wall_s']} s = {run['wall_s'] / 60:.1f} min (CSD response {run['response_s']} s, peaks "
                   f"{run['peaks_s']} s, maps {run['maps_s']} s)", f"| {run['memory_over_input']:.2f}× |",
                   f"{run['ms_per_voxel_wall']} ms per voxel"):
        assert figure in text, figure
    readme = " ".join((ROOT / "README.md").read_text().split())
    for figure in (f"took {run['wall_s']} s for the whole white matter ({run['voxels']:,} voxels) at "
                   f"{run['memory_over_input']:.2f}× the input's memory",
                   f"whole brain {run['wall_s']:.0f} s, {run['memory_over_input']:.2f}×"):
        assert figure in readme, figure


def test_nnls_batch_figures_are_those_of_the_recorded_bench():
    r = json.loads((ROOT / "bench" / "results" / "microstructure_scale.json").read_text())["nnls_chunks"]["result"]
    text = " ".join((ROOT / "bench" / "README.md").read_text().split())
    ms = {row["chunk"]: row["ms_per_voxel"] for row in r["rows"]}
    figures = (f"{ms[2048]} ms per voxel in batches of 2,048, {ms[1024]} at 1,024, {ms[512]} at 512, {ms[256]} at "
               f"256 and {ms[128]} at 128")
    assert figures in text
    assert r["default"] == 256 and r["repetitions"] == 3
    assert f"{ms[2048] / ms[256]:.1f}× faster than 2,048" in text
    if ms[256] == min(ms.values()):
        assert "the batch of 256 is" in text and "the fastest of the five" in text
    else:
        assert f"within {round(100 * (ms[256] / min(ms.values()) - 1))} % of the fastest" in text
    for h in r["hybrid"]:  # the whole hybrid per voxel, and the aim's verdict, per protocol
        met = "met" if h["ms_per_voxel"] <= 1.0 else "**missed**"
        assert f"| {h['m']} | {h['b_max']:,.0f} | {h['ms_per_voxel']} | ≤ 1: {met} | {h['precision_ms_per_voxel']} |" in text
    wb, mgh = r["hybrid"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"hybrid {wb['ms_per_voxel']} ms/voxel on one core for that protocol (aim ≤ 1), {mgh['ms_per_voxel']} on "
            f"HCP MGH (M = {mgh['m']})") in readme


def test_fine_tune_figures_are_those_of_the_recorded_candidate_cards():
    """The README's table of the variety fine-tunes (issue 17) is model_card.readme_table of their cards."""
    from sparsesight import model_card

    folder = ROOT / "bench" / "results" / "finetune"
    cards = {f"mlcsc + 12 varied, augment {k}": model_card.read(folder / f"mlcsc_variety_{k}.pt")
             for k in ("full", "light")}
    assert all(cards.values())
    text = section("Shipped weights")
    missing = [line for line in model_card.readme_table(cards) if line not in text]
    assert missing == [], "README's fine-tune table differs from bench/results/finetune; paste readme_table"
    for c in cards.values():
        curve = c["training"]["validation_dice"]
        assert f"{curve[0]:.3f}" in text and f"{curve[-1]:.3f}" in text


def test_active_learning_figures_are_those_of_the_recorded_bench():
    from sparsesight.bench.active_learning import markdown_table

    r = json.loads((ROOT / "bench" / "results" / "active_learning.json").read_text())
    assert r["seeds"] >= 5 and r["pool"] >= 30 and "partial" not in r  # issue 23's size, a finished run
    bench = (ROOT / "bench" / "README.md").read_text()
    assert [line for line in markdown_table(r) if line not in bench] == []
    assert r["command"] in bench and all(run["command"] in bench for run in r.get("runs") or [r])  # and combined
    readme = " ".join((ROOT / "README.md").read_text().split())
    for name in ("sparse_residual", "epistemic", "hybrid"):
        d = r["strategies"][name]["dice"]
        lo, hi = d["auc_ratio_ci95"]
        assert f"{d['auc_ratio_vs_random']:.3f}× [{lo:.3f}, {hi:.3f}]" in readme.replace("random's Dice AUC ", "")


def test_earlier_weights_figures_are_those_of_their_recorded_cards():
    """The README's table of the weights shipped before the read-out learning-rate factor is model_card.readme_table
    of their cards (kept in bench/results/shipped_before_readout_factor)."""
    from sparsesight import model_card

    folder = ROOT / "bench" / "results" / "shipped_before_readout_factor"
    cards = {f"{m} (before)": model_card.read(folder / f"{m}.pt") for m in ("mlcsc", "sum")}
    assert all(cards.values())
    missing = [line for line in model_card.readme_table(cards) if line not in section("Shipped weights")]
    assert missing == [], "README's table of the earlier weights differs from their cards; paste readme_table"


def test_mlcsc_seed_spread_figures_are_those_of_the_recorded_cards():
    from sparsesight import model_card

    shipped = model_card.read(ROOT / "bench" / "results" / "shipped_light_cpu" / "mlcsc.pt")  # the light recipe's seed 0
    cards = {"mlcsc (train seed 0, light, CPU)": shipped}
    for folder in sorted((ROOT / "bench" / "results" / "seeds").glob("mlcsc_train_seed*")):
        card = model_card.read(folder / "mlcsc.pt")
        t = card["training"]["train_seed"]
        assert card["training"]["seed"] == 0 and card["config"] == shipped["config"]  # same data and network
        cards[f"mlcsc (train seed {t})"] = card
    assert len(cards) >= 2
    text = section("Shipped weights")
    missing = [line for line in model_card.readme_table(cards) if line not in text]
    assert missing == [], "README's ML-CSC seed table differs from the cards; paste readme_table"
    flat = " ".join(text.split())
    for split in ("held-out", "held-out, 2 mm grid"):
        dice = [c["evaluation"]["dice"][split] for c in cards.values()]
        spread = {k: max(d[k] for d in dice) - min(d[k] for d in dice) for k in ("WT", "TC", "ET")}
        assert f"{split}: WT {spread['WT']:.3f}, TC {spread['TC']:.3f}, ET {spread['ET']:.3f}" in flat, split
    assert f"over {len(cards)} training seeds" in flat


def test_quarter_resolution_figures_are_those_of_its_card_and_the_readout_grid_bench():
    """ML-CSC before its read-out moved to 1/2 resolution (card kept in bench/results/shipped_quarter_resolution), and
    what the held-out labels keep on each read-out grid (bench/results/readout_grid.json)."""
    from sparsesight import model_card
    from sparsesight.bench.readout_grid import markdown_table

    card = model_card.read(ROOT / "bench" / "results" / "shipped_quarter_resolution" / "mlcsc.pt")
    assert card["config"]["strides"] == [1, 2, 2, 1]
    text = section("Shipped weights")
    missing = [line for line in model_card.readme_table({"mlcsc (1/4 resolution)": card}) if line not in text]
    assert missing == [], "README's table of the 1/4-resolution ML-CSC differs from its card"
    r = json.loads((ROOT / "bench" / "results" / "readout_grid.json").read_text())
    assert [line for line in markdown_table(r) if line not in text] == []
    assert r["command"] in " ".join(text.split())
    shipped = model_card.read(ROOT / "apps" / "sparsesight" / "pretrained" / "mlcsc.pt")
    factor = 2 ** sum(s == 2 for s in shipped["config"]["strides"])
    row = next(x for x in r["rows"] if x["factor"] == factor)  # the card's ceiling is the bench's row of its grid
    assert shipped["evaluation"]["readout_grid_ceiling"] == {"factor": factor, "dice": row["dice"]}


def test_robustness_tables_are_those_of_the_recorded_runs():
    from sparsesight.bench.robustness import markdown_tables

    text = (ROOT / "bench" / "README.md").read_text()
    flat = " ".join(text.split())
    for name in ("robustness.json", "robustness_before_readout_factor.json", "robustness_range_noise/robustness.json"):
        r = json.loads((ROOT / "bench" / "results" / name).read_text())
        lines = markdown_tables(r)
        tables = lines if name == "robustness.json" else lines[:lines.index("")]  # the filter banks: main run only
        missing = [line for line in tables if line and line not in text]
        assert missing == [], f"bench/README.md's robustness tables differ from bench/results/{name}"
        if r.get("command"):  # the runs that record their command: quoted as it ran
            assert f"OMP_NUM_THREADS=1 {r['command']}" in flat, name
    ratios = json.loads((ROOT / "bench" / "results" / "robustness.json").read_text())["ratios"]
    assert f"**{ratios['SUM_Rec']['wt_drop_noise_ratio']:.2f}×** for SUM_Rec" in flat
    noisy = json.loads((ROOT / "bench" / "results" / "robustness_range_noise" / "robustness.json").read_text())
    assert noisy["range_noise"] == [0.5, 0.1]
    assert f"**{noisy['ratios']['SUM_Rec']['wt_drop_noise_ratio']:.2f}×** (SUM {noisy['ratios']['SUM']['wt_drop_noise_ratio']:.2f}×)" in flat


def _full_recipe_seeds(name: str) -> dict:
    """{README label: card} of the shipped weights (train seed 0) and the full recipe's train seeds 1 and 2
    (bench/results/seeds_full)."""
    from sparsesight import model_card

    cards = {f"{name} (train seed 0, shipped)": model_card.read(ROOT / "apps" / "sparsesight" / "pretrained" /
                                                                f"{name}.pt")}
    for t in (1, 2):
        cards[f"{name} (train seed {t})"] = model_card.read(
            ROOT / "bench" / "results" / "seeds_full" / f"{name}_train_seed{t}" / f"{name}.pt")
    return cards


@pytest.mark.parametrize("name", ["mlcsc", "sum"])
def test_full_recipe_seed_spread_is_that_of_the_recorded_cards(name):
    """The shipped weights (train seed 0) and the full recipe's train seeds 1 and 2 (bench/results/seeds_full): the
    same command but --train-seed, the README's table and spread per split are those of their cards."""
    from sparsesight import model_card

    cards = _full_recipe_seeds(name)
    shipped = cards[f"{name} (train seed 0, shipped)"]
    for t, card in enumerate(list(cards.values())[1:], start=1):
        tr = card["training"]
        assert tr["train_seed"] == t and tr["seed"] == 0 and card["config"] == shipped["config"]
        assert tr["epochs"] == shipped["training"]["epochs"] and tr["device"] == "cuda" and "dice" in card["evaluation"]
        assert tr["config"]["augment"] == "full" and "16 varied ones" in tr["data"]
    text = section("Shipped weights")
    missing = [line for line in model_card.readme_table(cards) if line not in text]
    assert missing == [], f"README's full-recipe seed table of {name} differs from the cards; paste readme_table"
    flat = " ".join(text.split())
    spreads = []
    for split in shipped["evaluation"]["dice"]:
        dice = [c["evaluation"]["dice"][split] for c in cards.values()]
        s = {k: max(d[k] for d in dice) - min(d[k] for d in dice) for k in ("WT", "TC", "ET")}
        spreads.append(f"{split}: WT {s['WT']:.3f}, TC {s['TC']:.3f}, ET {s['ET']:.3f}")
    assert f"{name} full-recipe spread, " + "; ".join(spreads) in flat


def test_seed_spread_figures_are_those_of_the_recorded_cards():
    from sparsesight import model_card

    cards = {"sum (train seed 0, light, CPU)": model_card.read(ROOT / "bench" / "results" / "shipped_light_cpu" /
                                                               "sum.pt")}
    for t in (1, 2):
        card = model_card.read(ROOT / "bench" / "results" / "seeds" / f"sum_train_seed{t}" / "sum.pt")
        assert card["training"]["train_seed"] == t and card["training"]["seed"] == 0  # same data, other draws
        cards[f"sum (train seed {t})"] = card
    text = section("Shipped weights")
    missing = [line for line in model_card.readme_table(cards) if line not in text]
    assert missing == [], "README's seed-spread table differs from the cards; paste readme_table"
    dice = [c["evaluation"]["dice"]["held-out"] for c in cards.values()]
    spread = {k: max(d[k] for d in dice) - min(d[k] for d in dice) for k in ("WT", "TC", "ET")}
    assert f"WT {spread['WT']:.3f}, TC {spread['TC']:.3f}, ET {spread['ET']:.3f} on the held-out split" in " ".join(
        text.split())


def test_thick_slice_trial_is_that_of_its_card():
    """The --augment thick trial (bench/results/thick_trial) beside the full recipe's three seeds, per off-grid case."""
    from sparsesight import model_card

    cards = _full_recipe_seeds("mlcsc")
    thick = model_card.read(ROOT / "bench" / "results" / "thick_trial" / "mlcsc.pt")
    assert thick["training"]["config"]["augment"] == "thick" and thick["config"] == cards[next(iter(cards))]["config"]
    assert thick["training"]["epochs"] == 44 and "--variety-cases 16" in thick["training"]["command"]
    text = section("Shipped weights")
    assert f"{thick['training']['seconds']:,.0f} s" in text
    cards["mlcsc, augment thick (CPU)"] = thick
    lines = model_card.off_grid_case_table(cards) + model_card.readme_table({"mlcsc, augment thick (CPU)": thick})
    missing = [line for line in lines if line not in text]
    assert missing == [], "README's thick-slice trial tables differ from the cards"
    seeds = [c["evaluation"]["per_case_off_grid"] for n, c in cards.items() if "thick" not in n]
    case3 = thick["evaluation"]["per_case_off_grid"][3]
    assert case3["ET"] < min(s[3]["ET"] for s in seeds)  # the README's "below the worst"


def _check_tolerance_record(file: str, markdown_table, tolerances, sentences,
                            command: str = "OMP_NUM_THREADS=1 {}") -> None:
    """A tolerance or threshold bundles flag against (package data `file`) was measured on the shipped weights'
    versions, and the READMEs quote its table, its command (as `command` writes it) and, per model, every one of
    `sentences(name, record)`."""
    from sparsesight import model_card

    r = json.loads((ROOT / "lib" / "sparsesight" / "data" / file).read_text())
    assert tolerances() == r["models"]
    bench = (ROOT / "bench" / "README.md").read_text()
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert [line for line in markdown_table(r) if line not in bench] == []
    assert command.format(r["command"]) in " ".join(bench.split())
    for name, m in r["models"].items():
        card = model_card.read(ROOT / "apps" / "sparsesight" / "pretrained" / f"{name}.pt")
        assert m["version"] == card["version"], f"{name}: measured on other weights than the shipped ones"
        for sentence in sentences(name, m):
            assert sentence in readme


def test_noise_tolerance_is_that_of_the_recorded_run_of_the_shipped_weights():
    from sparsesight.bench.noise_tolerance import markdown_table
    from sparsesight.input_noise import tolerances

    _check_tolerance_record("noise_tolerance.json", markdown_table, tolerances, lambda name, m: (
        f"`{name}` holds up to noise {m['level']:g} of the range (input σ_z {m['sigma_z']:.3f})",))


def test_resampled_noise_tolerance_is_that_of_the_recorded_run_of_the_shipped_weights():
    """The tolerance a resampled scan's noise is flagged against (bench/noise_grid) was measured on the shipped
    weights, and the READMEs quote its tables, its estimates, its command and each model's tolerance."""
    from sparsesight.bench.noise_grid import flag_table, markdown_table, summary_lines
    from sparsesight.input_noise import tolerances

    def sentences(name, m):
        fl = m["flags"]["served_left_out"]
        return (f"`{name}` holds up on resampled scans to noise {m['level']:g}× the phantoms' own (served σ_z "
                f"{m['sigma_z']:.3f})",
                f"flags {fl['fell_and_flagged']} of the {m['flags']['fell']} scans whose Dice fell")

    _check_tolerance_record("noise_tolerance_resampled.json", lambda r: markdown_table(r) + flag_table(r),
                            lambda: tolerances(resampled=True), sentences, command="`{}`")
    r = json.loads((ROOT / "lib" / "sparsesight" / "data" / "noise_tolerance_resampled.json").read_text())
    assert summary_lines(r)[0] in " ".join((ROOT / "bench" / "README.md").read_text().split())
    q, o, g = (r["estimates"][k] for k in ("resampled_over_true", "own_grid_over_true", "noise_gain"))
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"On the resampled image σ_z read {q['min']:.2f}-{q['max']:.2f} of the noise put in" in readme
    assert f"own grid (median {o['median']:.2f} of the truth)" in readme and f"(`noise_gain`, {g['median']:.2f} on" in readme


def test_slice_tolerance_is_that_of_the_recorded_run_of_the_shipped_weights():
    from sparsesight.bench.slice_tolerance import markdown_table
    from sparsesight.input_grid import tolerances

    _check_tolerance_record("slice_tolerance.json", markdown_table, tolerances,
                            lambda name, m: (f"`{name}` holds up to slices {m['slice_mm']:g} mm thick",))


def test_upsampled_tolerance_is_that_of_the_recorded_run_of_the_shipped_weights():
    """The reading an upsampled scan is flagged against (bench/upsampled_slices) was measured on the shipped weights,
    and the READMEs quote its table, its summary, its command and each model's tolerance and catch."""
    from sparsesight.bench.upsampled_slices import markdown_table, summary
    from sparsesight.input_grid import upsampled_tolerances

    _check_tolerance_record("upsampled_tolerance.json", markdown_table, upsampled_tolerances, lambda name, m: (
        f"`{name}` holds up on upsampled scans to a reading of {m['apparent_mm']:g} mm",), command="`{}`")
    r = json.loads((ROOT / "lib" / "sparsesight" / "data" / "upsampled_tolerance.json").read_text())
    bench = " ".join((ROOT / "bench" / "README.md").read_text().split())
    assert all(line in bench for line in summary(r))
    s, m = r["models"]["sum"], r["models"]["mlcsc"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"SUM's flag catches {s['caught']} of the {s['fell']} upsampled groups whose Dice fell (and "
            f"{s['false_flags']} that held), ML-CSC's {m['caught']} of {m['fell']} (and {m['false_flags']} that held)") in readme
    # the shipped record is the combination of the three runs in bench/results, one per slice axis, each of which
    # bench/README quotes with what the shipped tolerance flags on it
    from sparsesight.bench.upsampled_slices import combine, shipped_lines

    runs = [json.loads((ROOT / "bench" / "results" / f"upsampled_slices_axis{a}.json").read_text()) for a in range(3)]
    assert r["axes"] == [0, 1, 2] and combine(runs)["models"] == json.loads(json.dumps(r["models"]))
    assert all(line in bench for run in runs for line in shipped_lines(run))


def test_smoothed_tolerance_is_that_of_the_recorded_run_of_the_shipped_weights():
    """The reading a scan smoothed in 3D is flagged against (bench/smoothed_scans) was measured on the shipped
    weights, and the READMEs quote its table, its summary, its command and each model's tolerance."""
    from sparsesight.bench.smoothed_scans import markdown_table, summary
    from sparsesight.input_grid import smoothed_tolerances

    _check_tolerance_record("smoothed_tolerance.json", markdown_table, smoothed_tolerances, lambda name, m: (
        f"`{name}` holds up on smoothed scans to a reading of {m['apparent_mm']:g} mm",
        f"`{name}` would flag {m['as_upsampled']['false_flags']} smoothed groups that held"), command="`{}`")
    r = json.loads((ROOT / "lib" / "sparsesight" / "data" / "smoothed_tolerance.json").read_text())
    bench = " ".join((ROOT / "bench" / "README.md").read_text().split())
    assert all(line in bench for line in summary(r))


def test_off_grid_ablation_is_that_of_the_shipped_cards():
    """The off-grid ablation ran the shipped weights, its random-grid Dice on the cards' off-grid cases are the
    cards' (the same split, segmented the same way), and bench/README quotes its table, intervals and command."""
    from sparsesight import model_card
    from sparsesight.bench.off_grid_ablation import interval_lines, markdown_table

    r = json.loads((ROOT / "bench" / "results" / "off_grid_ablation.json").read_text())
    bench = (ROOT / "bench" / "README.md").read_text()
    assert [line for line in markdown_table(r) + interval_lines(r) if line not in bench] == []
    assert f"OMP_NUM_THREADS=1 {r['command']}" in " ".join(bench.split())
    for name in r["mean"]:
        card = model_card.read(ROOT / "apps" / "sparsesight" / "pretrained" / f"{name}.pt")
        per_case = {c["case"]: c for c in card["evaluation"]["per_case_off_grid"]}
        on_card = [c for c in r["cases"] if c["case"] in per_case]
        assert len(on_card) == len(per_case)
        for c in r["cases"]:
            m = c["models"][name]
            assert m["version"] == card["version"]
            if c["case"] in per_case:
                card_dice = {k: per_case[c["case"]][k] for k in ("WT", "TC", "ET")}
                assert m["card_off_grid"] == card_dice and m["off_grid"] == pytest.approx(card_dice, abs=1e-6)


def test_label_consistency_thresholds_are_those_of_the_recorded_run_of_the_shipped_weights():
    """The thresholds bundles flag a label's agreement with its mirrored scan against (package data) were measured on
    the shipped weights, and the READMEs quote the table, the command and each model's thresholds and catch."""
    from sparsesight.bench.label_consistency import markdown_table
    from sparsesight.label_consistency import thresholds

    def sentences(name, m):
        t, wt = m["threshold"], m["detection"]["WT"]
        return (f"`{name}` flags a label whose agreement is below WT {t['WT']:.3f} / TC {t['TC']:.3f} / ET "
                f"{t['ET']:.3f}",
                f"{len(wt['missed_aim_flagged_loo'])} of the {len(wt['missed_aim'])} segmentations below the WT aim")

    _check_tolerance_record("label_consistency.json", markdown_table, thresholds, sentences, command="`{}`")


def test_series_noise_figures_are_those_of_the_recorded_run():
    """The noise of a PACS study's series resampled onto FLAIR's grid (bench/series_noise): the READMEs quote its
    table, summary and command."""
    from sparsesight.bench.series_noise import markdown_table, model_table, summary_lines

    r = json.loads((ROOT / "bench" / "results" / "series_noise.json").read_text())
    bench = " ".join((ROOT / "bench" / "README.md").read_text().split())
    for line in markdown_table(r) + summary_lines(r) + model_table(r):
        assert line in bench, line
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"`{r['command']}`" in bench and f"`{r['command']}`" in readme
    b, s = r["summary"]["before"], r["summary"]["served"]
    assert f"the T2's noise read {b['min']:.2f}-{b['max']:.2f} of the noise the network sees" in readme
    assert f"`input_noise.noise_gain_by_modality`): {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}) of what" in readme
    assert f"read {b['min']:.2f}-{b['max']:.2f} of what the network sees, from the series' own grid × the chained " \
           f"gain {s['min']:.2f}-{s['max']:.2f}" in readme
    m = r["models"]
    assert (f"at 10× its noise SUM lost at most {m['sum']['largest_drop']:.3f} of a region's Dice, ML-CSC "
            f"{m['mlcsc']['largest_drop']:.3f}), so the flag is conservative there: SUM's flagged {m['sum']['flagged']} of "
            f"{m['sum']['scans']} noisier studies, {m['sum']['fell_and_flagged']} of which fell") in readme


def test_the_shipped_resampled_noise_tolerance_is_the_12_case_record_and_its_slice_classes_are_quoted():
    """The package ships the 12-case run's record (bench/results/noise_grid_12) unchanged, and bench/README quotes
    the per-slice-class tolerances derived from its rows (why there is one tolerance per model)."""
    from sparsesight.bench.noise_grid import slice_class_table

    shipped = (ROOT / "lib" / "sparsesight" / "data" / "noise_tolerance_resampled.json").read_text()
    assert shipped == (ROOT / "bench" / "results" / "noise_grid_12" / "noise_grid.json").read_text()
    bench = (ROOT / "bench" / "README.md").read_text()
    assert [line for line in slice_class_table(json.loads(shipped)) if line not in bench] == []

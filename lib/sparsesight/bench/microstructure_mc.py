"""Microstructure against Monte Carlo (issue 21): signals from an independent simulator, dmipy-sim (random
walkers in reflecting cylinders and random cylinder packings, JAX on CPU), not from SparseSight's own analytic
model; the forward model's gap to them; MAE of fingerprinting, MLP and hybrid on single bundles and crossings.

Two steps, two environments. dmipy-sim needs numpy >= 2, SparseSight numpy < 2, so they cannot share one
interpreter (nor be one pip extra); the first step writes small tables that the second reads (the recorded
tables are committed, so step 2 runs without dmipy-sim):

    # 1. Monte-Carlo tables, in a separate environment: python -m venv mc && mc/bin/pip install dmipy-sim scipy
    PYTHONPATH=lib mc/bin/python -m sparsesight.bench.microstructure_mc generate \
        --out bench/results/microstructure_mc_tables.npz          # ~10 min on one core
    # 2. evaluation (SparseSight's environment)
    python -m sparsesight.bench.microstructure_mc evaluate --out bench/results

Tables. A population of parallel axons is axially symmetric, so its signal depends only on the shell (b, G, Δ, δ)
and on c² = cos²θ between the gradient and the axons. For every axon radius r in RADII_UM the intra-axonal signal
(walkers in one reflecting cylinder) and, for each target packing fraction, the extra-axonal signal (walkers
between randomly packed cylinders of that radius, dmipy-sim's RSA packing, periodic box) are simulated on each
shell of the protocol at N_NODES values of c² (ideal square pulses, as the analytic model). Both log-signals are
linear in c² for a cylinder (Gaussian along the axis, ln E⊥ scaled by sin²θ, exactly so under the GPA; the
tables check it for the walkers), so a signal at any orientation is the linear interpolation in c² of the log
table; `test_microstructure_mc` proves the interpolation exact on analytic tables.

Voxels (evaluate): ν, r, f with r and f at the simulated values, orientations random; single bundles (ν_2 = 0,
the second orientation = the first, as the runner does with one CSD peak) and crossings at 60 and 90 degrees; free
water 0 in half the voxels (spurious free water is the mean ν_fw estimated there), uniform 0-0.3 in the others
(0-1 with --voxel-free-water-max 1);
Rician noise at SNR 30. The MLP and hybrid are trained on the analytic model's simulations (as served), so the
MC voxels test them on data they were not made from. A single bundle is scored as one: ν as the two estimated
populations' sum, r and f as their ν-weighted means (the two share the orientation, so any split is equivalent). Reported: forward-model gap per r and f, MAE ν / r / f per
method and scenario, spurious free water, voxels with ν_1 + ν_2 + ν_fw > 1. Fingerprinting (70-80 ms a voxel)
scores n_fp of the voxels, evenly spread over the scenario's (half of them with free water).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..data.diffusion.extra_axonal import LAWS, TORTUOSITY
from ..data.diffusion.sensitivity import PRECISION_AIMS, mae_floor

logger = logging.getLogger(__name__)

RADII_UM = (1.0, 2.0, 3.0, 4.0, 6.0)  # 0.5 µm needs 4x the walker steps of 1 µm; left out for CPU time
PACKINGS = (0.3, 0.45)  # target intra-axonal volume fractions; RSA of equal cylinders tops out near 0.45-0.5
N_NODES = 7  # c² nodes per shell
D = 2.0e-9
TABLES = Path("bench/results/microstructure_mc_tables.npz")
CALIBRATION_DIR = Path("bench/results/microstructure_mc_extra_calibration")  # generate_extra's files, calibrate's figure


def nodes() -> np.ndarray:
    return np.linspace(0.0, 1.0, N_NODES)


def _protocol(subsample: int):
    from ..data.diffusion import hcp_mgh_protocol

    return hcp_mgh_protocol(subsample)


def _shells(protocol):
    """(b s/mm², Δ s, δ s) of each diffusion-weighted shell."""
    rows = [r for r in protocol.shell_table() if r["b"] > 50]
    return [(r["b"], r["big_delta_ms"] * 1e-3, r["small_delta_ms"] * 1e-3) for r in rows]


# ------------------------------------------------------------------------------------------------ generate
def generate(out: Path, walkers: int = 20000, subsample: int = 4, step_fraction: float = 0.2, seed: int = 0) -> dict:
    """Monte-Carlo tables with dmipy-sim (see the module docstring). Steps are `step_fraction` of the radius
    (rms displacement per step), at least 300 per sequence."""
    import dmipy_sim as mc

    protocol = _protocol(subsample)
    shells = _shells(protocol)
    c2 = nodes()
    th = np.arccos(np.sqrt(c2))
    dirs = np.stack([np.sin(th), np.zeros_like(th), np.cos(th)], 1)  # axons along z
    intra = np.zeros((len(RADII_UM), len(shells), N_NODES))
    extra = np.zeros((len(RADII_UM), len(PACKINGS), len(shells), N_NODES))
    achieved = np.zeros((len(RADII_UM), len(PACKINGS)))
    groups: dict = {}  # shells sharing Δ, δ are simulated in one waveform (the walkers' steps are shared)
    for s, (_b, big, small) in enumerate(shells):
        groups.setdefault((big, small), []).append(s)
    t0 = time.time()
    for i, r_um in enumerate(RADII_UM):
        r = r_um * 1e-6
        packs = [mc.pack_cylinders(np.full(60, r), target_vf=vf, seed=seed + j) for j, vf in enumerate(PACKINGS)]
        achieved[i] = [p[2] for p in packs]
        for (big, small), members in groups.items():
            dt = (step_fraction * r) ** 2 / (6 * D)
            n_t = max(300, int(np.ceil((big + small) / dt)))
            bvals = np.repeat([shells[s][0] * 1e6 for s in members], N_NODES)
            wf = mc.set_b(mc.pgse(delta=small, DELTA=big, G_magnitude=0.1, bvecs=np.tile(dirs, (len(members), 1)),
                                  n_t=n_t, slew_rate=np.inf), bvals)

            def run(geometry, sd, wf=wf, k=len(members)):
                sig = np.asarray(mc.simulate(n_walkers=walkers, diffusivity=D, waveform=wf, geometry=geometry,
                                             seed=sd, require_gpu=False), np.float64)
                return np.log(np.clip(sig, 1e-6, None)).reshape(k, N_NODES)

            intra[i, members] = run(mc.Cylinder(r, [0, 0, 1]), seed + 17 * i)
            for j, (centers, side, _) in enumerate(packs):
                extra[i, j, members] = run(mc.PackedCylinders(np.full(60, r), centers, side), seed + 1000 + 17 * i + j)
            logger.info(f"r {r_um} µm, Δ/δ {1e3 * big:g}/{1e3 * small:g} ms: {n_t} steps, {time.time() - t0:.0f} s")
    from importlib.metadata import version

    meta = {"simulator": f"dmipy-sim {version('dmipy-sim')}", "jax": version("jax"), "walkers": walkers,
            "step_fraction": step_fraction, "protocol": protocol.name, "seed": seed, "seconds": time.time() - t0}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, radii_um=np.asarray(RADII_UM), packings=np.asarray(PACKINGS), achieved=achieved,
                        shells=np.asarray(shells), c2=c2, intra=intra, extra=extra, meta=json.dumps(meta))
    return meta


#: the extra-axonal calibration (generate_extra): packings other than the bench's (other seeds), radii spanning the
#: diffusion times of the dictionary's range, b across the axons only (along them the hindered signal is exactly
#: Gaussian: the cylinders are infinite), at the tables' timing
CAL_RADII_UM = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
CAL_PACKINGS = (0.15, 0.3, 0.45, 0.5)  # RSA of 60 equal cylinders tops out at 0.5
CAL_B = (250.0, 500.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0)  # s/mm²
CAL_TIMING_S = (21.8e-3, 12.9e-3)  # Δ, δ: HCP's, the MC tables' and the calibration's
CAL_SEED = 100  # packing seeds 100 + 1000 f: none of them is a packing the bench scores (seeds 0, 1)


def _rsa_packing(mc, r: float, vf: float, seed: int, tries: int = 5):
    """dmipy-sim's RSA packing of 60 cylinders of radius r at fraction vf: the first of `tries` seeds from `seed`
    on that fills it (RSA of equal disks jams near 0.5 with 60 of them)."""
    for t in range(tries):
        try:
            return mc.pack_cylinders(np.full(60, r), target_vf=vf, seed=seed + t)
        except RuntimeError:
            logger.info(f"RSA did not reach f {vf} with seed {seed + t}")
    raise RuntimeError(f"RSA did not reach f {vf} in {tries} seeds")


def generate_extra(out: Path, packings=CAL_PACKINGS, radii_um=CAL_RADII_UM, walkers: int = 20000,
                   step_fraction: float = 0.2, seed: int = CAL_SEED, timing_s=CAL_TIMING_S) -> dict:
    """Extra-axonal signals across the axons (c² = 0) for the calibration of the hindered law
    (data/diffusion/extra_axonal.py): walkers between RSA-packed equal cylinders, per target packing fraction and
    radius, at CAL_B and `timing_s` (Δ, δ; the calibration's is CAL_TIMING_S, another one checks the law's
    time scaling). ln E⊥ (radii, packings, b) and the achieved fractions go to `out`."""
    import dmipy_sim as mc

    big, small = timing_s
    bvals = np.asarray(CAL_B) * 1e6
    table = np.zeros((len(radii_um), len(packings), len(bvals)))
    achieved = np.zeros((len(radii_um), len(packings)))
    t0 = time.time()
    for i, r_um in enumerate(radii_um):
        r = r_um * 1e-6
        dt = (step_fraction * r) ** 2 / (6 * D)
        n_t = max(300, int(np.ceil((big + small) / dt)))
        wf = mc.set_b(mc.pgse(delta=small, DELTA=big, G_magnitude=0.1, bvecs=np.tile([[1.0, 0.0, 0.0]], (len(bvals), 1)),
                              n_t=n_t, slew_rate=np.inf), bvals)
        for j, vf in enumerate(packings):
            centers, side, got = _rsa_packing(mc, r, vf, seed + int(round(1000 * vf)))
            achieved[i, j] = got
            sig = np.asarray(mc.simulate(n_walkers=walkers, diffusivity=D, waveform=wf,
                                         geometry=mc.PackedCylinders(np.full(60, r), centers, side),
                                         seed=seed + 1000 + 17 * i + j, require_gpu=False), np.float64)
            table[i, j] = np.log(np.clip(sig, 1e-6, None))
            logger.info(f"r {r_um} µm, f {got:.3f}: {n_t} steps, D_app/D {np.round(-table[i, j] / (bvals * D), 3)}, "
                        f"{time.time() - t0:.0f} s")
    from importlib.metadata import version

    meta = {"simulator": f"dmipy-sim {version('dmipy-sim')}", "jax": version("jax"), "walkers": walkers,
            "step_fraction": step_fraction, "seed": seed, "timing_s": [big, small], "d": D,
            "seconds": time.time() - t0}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, radii_um=np.asarray(radii_um), packings=np.asarray(packings), achieved=achieved,
                        b=np.asarray(CAL_B), log_perp=table, meta=json.dumps(meta))
    return meta


def gamma_log_perp(b_perp, dperp, kurtosis):
    """The gamma law of the hindered signal across the axons: ln E⊥ = -(3/K) ln(1 + b⊥ D⊥ K / 3)
    (data/diffusion/extra_axonal.py); b⊥ in ms/µm² and D⊥ in µm²/ms, or any pair whose product is unitless."""
    return -(3.0 / kurtosis) * np.log1p(np.asarray(b_perp) * dperp * kurtosis / 3.0)


def calibrate(parts, out: Path | None = None, min_signal: float = 0.03, figure: Path | None = None) -> dict:
    """Fit the gamma law to every (radius, packing) of the generate_extra files `parts`: D⊥ and K by weighted least
    squares on ln E⊥ (weights E / σ_MC, σ_MC = 1/√(2 walkers) the walkers' noise on E; b with E > min_signal only,
    below it the walkers' noise dominates). Writes the calibration file the "mc" law reads, and its picture to
    `figure` (default calibration.png beside the first part)."""
    from scipy.optimize import curve_fit

    packs = [dict(np.load(p, allow_pickle=False)) for p in parts]
    metas = [json.loads(str(p["meta"])) for p in packs]
    radii = packs[0]["radii_um"]
    if any(not np.array_equal(p["radii_um"], radii) or not np.array_equal(p["b"], packs[0]["b"]) for p in packs):
        raise ValueError("the calibration parts differ in radii or b")
    achieved = np.concatenate([p["achieved"] for p in packs], 1)  # (R, P)
    table = np.concatenate([p["log_perp"] for p in packs], 1)  # (R, P, B)
    order = np.argsort(achieved.mean(0))
    achieved, table = achieved[:, order], table[:, order]
    big, small = metas[0]["timing_s"]
    d = metas[0]["d"]
    b = np.asarray(packs[0]["b"]) * 1e-3  # ms/µm²
    d_um = d * 1e9  # µm²/ms
    sigma_mc = 1.0 / np.sqrt(2.0 * metas[0]["walkers"])
    dperp = np.zeros(table.shape[:2])
    kurt = np.zeros(table.shape[:2])
    rms = np.zeros(table.shape[:2])
    used = np.zeros(table.shape[:2], dtype=int)
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            e = np.exp(table[i, j])
            keep = e > min_signal
            (dp, k), _ = curve_fit(gamma_log_perp, b[keep], table[i, j, keep], p0=(d_um * (1 - achieved[i, j]), 0.3),
                                   sigma=sigma_mc / e[keep], bounds=([0.01, 1e-4], [d_um, 10.0]))
            dperp[i, j], kurt[i, j] = dp / d_um, k
            rms[i, j] = np.sqrt(np.mean((gamma_log_perp(b[keep], dp, k) - table[i, j, keep]) ** 2))
            used[i, j] = int(keep.sum())
    t_eff = big - small / 3
    cal = {"law": "ln E⊥ = -(3/K) ln(1 + b⊥ D⊥ K/3), per packing (rows) and cylinder radius (columns)",
           "command": "python -m sparsesight.bench.microstructure_mc calibrate " + " ".join(str(p) for p in parts),
           "simulator": metas[0]["simulator"], "walkers": metas[0]["walkers"],
           "step_fraction": metas[0]["step_fraction"], "seeds": [m["seed"] for m in metas],
           "timing_s": [big, small], "d": d, "t_eff_s": t_eff, "min_signal": min_signal, "b_ms_per_um2": b.tolist(),
           "radii_um": radii.tolist(), "tau": (d * t_eff / (radii * 1e-6) ** 2).round(4).tolist(),
           "fractions": achieved.mean(0).round(4).tolist(),
           "dperp_over_d": dperp.T.round(4).tolist(), "kurtosis": kurt.T.round(4).tolist(),
           "rms_log": rms.T.round(4).tolist(), "points": used.T.tolist(),
           "tortuosity_dperp_over_d": (1 - achieved.mean(0)).round(4).tolist(),
           "seconds": round(sum(m["seconds"] for m in metas), 1)}
    from ..data.diffusion.extra_axonal import CALIBRATION_FILE

    out = Path(out or CALIBRATION_FILE)
    out.write_text(json.dumps(cal, indent=1) + "\n")
    figure = Path(figure or Path(parts[0]).parent / "calibration.png")
    figure.write_bytes(calibration_figure(b, radii, achieved.mean(0), table, dperp * d_um, kurt))
    return cal


def calibration_figure(b: np.ndarray, radii, fractions, table: np.ndarray, dperp_um: np.ndarray,
                       kurt: np.ndarray) -> bytes:
    """One panel per packing: the walkers' ln E⊥ against b⊥ per radius (dots), the gamma law fitted to them
    (lines) and the tortuosity law's -b⊥ D (1 - f) (dashed): the picture of what `calibrate` fitted."""
    from ..preview import png_bytes, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(fractions), figsize=(3.2 * len(fractions), 3.2), sharey=True)
    bb = np.linspace(0, b.max(), 60)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(radii)))
    for j, (ax, f) in enumerate(zip(np.atleast_1d(axes), fractions)):
        for i, (r, c) in enumerate(zip(radii, colours)):
            ax.plot(b, table[i, j], "o", ms=3, color=c, label=f"r {r:g} µm")
            ax.plot(bb, gamma_log_perp(bb, dperp_um[i, j], kurt[i, j]), "-", lw=1, color=c)
        ax.plot(bb, -bb * D * 1e9 * (1 - f), "k--", lw=1, label="D (1 - f)")
        ax.set_title(f"f {f:.2f}")
        ax.set_xlabel("b⊥ (ms/µm²)")
        ax.set_ylim(-6, 0.1)
    np.atleast_1d(axes)[0].set_ylabel("ln E⊥ (walkers: dots; gamma law: lines)")
    np.atleast_1d(axes)[-1].legend(fontsize=6)
    return png_bytes(fig)


def check_timing(parts, out: Path | None = None, min_signal: float = 0.03) -> dict:
    """The calibrated law at a diffusion time it was not fitted at: walkers (generate_extra with another --timing,
    other packings) against the law's per-radius prediction (its fits interpolated in ln τ = D t / r² and in f,
    extra_axonal.radius_coefficients) and against the tortuosity law, on the b whose signal is above `min_signal`.
    Per radius and packing: the largest |E_law - E_walkers| of each law. Written to `out` (JSON) when given."""
    from ..data.diffusion import extra_axonal as ea

    cal = ea.load_calibration()
    fc = np.asarray(cal["fractions"])
    rows = []
    for path in parts:
        z = dict(np.load(path, allow_pickle=False))
        meta = json.loads(str(z["meta"]))
        big, small = meta["timing_s"]
        b = np.asarray(z["b"]) * 1e-3
        d, k = ea.radius_coefficients(np.array([big - small / 3]), z["radii_um"], cal)  # (P, R, 1)
        for i, r in enumerate(z["radii_um"]):
            for j in range(z["achieved"].shape[1]):
                f = float(z["achieved"][i, j])
                e = np.exp(z["log_perp"][i, j])
                keep = e > min_signal
                d_f = float(np.interp(f, fc, d[:, i, 0])) * D * 1e9
                k_f = float(np.interp(f, fc, k[:, i, 0]))
                mc_law = np.exp(gamma_log_perp(b, d_f, k_f))
                tort = np.exp(-b * D * 1e9 * (1 - f))
                rows.append({"timing_ms": [big * 1e3, small * 1e3], "r_um": float(r), "f": round(f, 3),
                             "tau": round(D * (big - small / 3) / (r * 1e-6) ** 2, 3), "b_used": int(keep.sum()),
                             "mc_law_max_abs": round(float(np.abs(mc_law - e)[keep].max()), 4),
                             "tortuosity_max_abs": round(float(np.abs(tort - e)[keep].max()), 4)})
    result = {"command": "python -m sparsesight.bench.microstructure_mc check-timing " + " ".join(str(p) for p in parts),
              "rows": rows, "walkers": meta["walkers"]}
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return result


# ------------------------------------------------------------------------------------------------ signals
def load_tables(path=TABLES) -> dict:
    with np.load(path) as z:
        t = {k: z[k] for k in z.files}
    t["meta"] = json.loads(str(t["meta"]))
    return t


def _shell_index(protocol, shells: np.ndarray) -> np.ndarray:
    """Shell row of each volume (-1 for b = 0); the tables must hold the protocol's shells and timing."""
    idx = np.full(protocol.m, -1)
    for m in np.nonzero(~protocol.b0_mask)[0]:
        d = np.abs(shells[:, 0] - protocol.bvals[m])
        k = int(d.argmin())
        if d[k] > 100 or abs(shells[k, 1] - protocol.big_deltas[m]) > 1e-5 \
                or abs(shells[k, 2] - protocol.small_deltas[m]) > 1e-5:
            raise ValueError(f"the tables do not hold volume {m} (b {protocol.bvals[m]:g}) with its timing")
        idx[m] = k
    return idx


def population_signal(table: np.ndarray, c2_nodes: np.ndarray, shell_idx: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """exp of the log-table (shells, nodes) interpolated linearly in c² for each volume: c2 (n, M) -> (n, M);
    b = 0 volumes (shell -1) give 1."""
    out = np.ones(c2.shape)
    for s in range(table.shape[0]):
        cols = shell_idx == s
        out[:, cols] = np.exp(np.interp(c2[:, cols], c2_nodes, table[s]))
    return out


def analytic_tables(protocol, radii_um, fractions, law=TORTUOSITY) -> dict:
    """The analytic model's tables on the same (shell, c²) layout (extra-axonal by `law`, default the tortuosity
    law): what the forward-model check compares with, and the interpolation test's reference."""
    from ..data import diffusion as dif

    shells = np.asarray(_shells(protocol))
    c2 = nodes()
    intra = np.zeros((len(radii_um), len(shells), N_NODES))
    per_r = np.ndim(fractions) == 2  # achieved packing fractions per radius, or one list for every radius
    extra = np.zeros((len(radii_um), np.shape(fractions)[-1], len(shells), N_NODES))
    for s, (b, big, small) in enumerate(shells):
        g = np.sqrt(b * 1e6 / (dif.GAMMA**2 * small**2 * (big - small / 3)))
        # the shell as a protocol of its own (with the b = 0 a protocol needs) for the extra-axonal law
        one = dif.Protocol(np.r_[0.0, np.full(len(c2), b)], np.tile([1.0, 0.0, 0.0], (len(c2) + 1, 1)), big, small)
        for i, r in enumerate(radii_um):
            lp = dif.log_restricted_perp(r * 1e-6, g, big, small)
            intra[i, s] = -b * 1e6 * dif.D_AXON * c2 + (1 - c2) * lp
            for j, f in enumerate(fractions[i] if per_r else fractions):
                extra[i, j, s] = law.log_signal(one, np.r_[0.0, c2], np.float64(f))[1:]
    return {"shells": shells, "c2": c2, "intra": intra, "extra": extra}


#: free water of the voxels that have some: uniform in [0, this] (the recorded runs; --voxel-free-water-max)
VOXEL_FREE_WATER_MAX = 0.3


def voxels(tables: dict, protocol, n: int, scenario: str, snr: float | None, seed: int = 0,
           fw_max: float = VOXEL_FREE_WATER_MAX) -> dict:
    """n voxels of `scenario` ("single", "crossing60", "crossing90") from the tables, normalised by S0; free water
    0 in the first half, uniform in [0, fw_max] in the others."""
    from ..data import diffusion as dif

    rng = np.random.default_rng(seed)
    shell_idx = _shell_index(protocol, tables["shells"])
    nr, npk = tables["intra"].shape[0], tables["extra"].shape[1]
    ir, jp = rng.integers(0, nr, (n, 2)), rng.integers(0, npk, (n, 2))
    if scenario == "single":
        u1 = dif.random_unit(rng, n)
        u2 = u1.copy()
    else:
        u1, u2 = dif.crossing_pair(rng, n, float(scenario.replace("crossing", "")))
    fw = np.where(np.arange(n) < n // 2, 0.0, rng.uniform(0, fw_max, n))
    share2 = np.zeros(n) if scenario == "single" else rng.uniform(0.3, 0.5, n)
    nu = np.stack([1 - share2, share2], 1) * (1 - fw)[:, None]
    f = tables["achieved"][ir, jp]
    r = np.asarray(tables["radii_um"])[ir]
    clean = fw[:, None] * dif.free_water_signal(protocol)[None]
    for k, u in enumerate((u1, u2)):
        c2 = dif.cos2_angles(protocol, u)
        s_in = np.stack([population_signal(tables["intra"][ir[v, k]], tables["c2"], shell_idx, c2[v:v + 1])[0]
                         for v in range(n)])
        s_ex = np.stack([population_signal(tables["extra"][ir[v, k], jp[v, k]], tables["c2"], shell_idx,
                                           c2[v:v + 1])[0] for v in range(n)])
        clean += nu[:, k:k + 1] * (f[:, k:k + 1] * s_in + (1 - f[:, k:k + 1]) * s_ex)
    noisy = clean if snr is None else dif.rician(clean, snr, rng)
    if scenario == "single":  # the second population is absent: its r and f are not scored
        r[:, 1], f[:, 1] = r[:, 0], f[:, 0]
    return {"signal": dif.normalise_s0(noisy, protocol), "clean": clean, "nu": nu, "r": r, "f": f, "nu_fw": fw,
            "u": np.stack([u1, u2], 1)}


# ------------------------------------------------------------------------------------------------ evaluate
def apparent_dperp(tables: dict, calibrated: dict | None = None) -> list[dict]:
    """The extra-axonal signal across the axons (c² = 0) of every radius and packing as an apparent diffusivity per
    shell, D_app / D = -ln S / (b D): one number at every b for the analytic model's Gaussian D⊥ = D (1 - f); a
    fall with b is the walkers' non-Gaussian (kurtotic) hindrance, which no single D⊥ can follow. With
    `calibrated` (analytic_tables of the "mc" law) also that law's, per shell ("mc_law")."""
    b = np.asarray(tables["shells"])[:, 0] * 1e6
    rows = []
    for i, r in enumerate(tables["radii_um"]):
        for j in range(tables["extra"].shape[1]):
            f = float(tables["achieved"][i, j])
            row = {"r_um": float(r), "f": round(f, 3), "model": round(1.0 - f, 3), "b": b.tolist(),
                   "mc": [round(float(-tables["extra"][i, j, s, 0] / (b[s] * D)), 3) for s in range(len(b))]}
            if calibrated is not None:
                row["mc_law"] = [round(float(-calibrated["extra"][i, j, s, 0] / (b[s] * D)), 3) for s in range(len(b))]
            rows.append(row)
    return rows


def forward_gap(tables: dict, protocol, law=TORTUOSITY) -> list[dict]:
    """Largest |S_analytic - S_MC| over shells and orientations, per radius (intra) and packing (extra; by the
    extra-axonal `law`, default the tortuosity law)."""
    ana = analytic_tables(protocol, tables["radii_um"], tables["achieved"], law)
    rows = []
    for i, r in enumerate(tables["radii_um"]):
        row = {"r_um": float(r),
               "intra_max_abs": round(float(np.abs(np.exp(ana["intra"][i]) - np.exp(tables["intra"][i])).max()), 4)}
        for j in range(tables["extra"].shape[1]):
            gap = np.abs(np.exp(ana["extra"][i, j]) - np.exp(tables["extra"][i, j])).max()
            row[f"extra_f{tables['achieved'][i, j]:.2f}_max_abs"] = round(float(gap), 4)
        rows.append(row)
    return rows


def scenario_voxels(tables: dict, protocol, n: int, scenario: str, snr: float, seed: int,
                    fw_max: float = VOXEL_FREE_WATER_MAX) -> dict:
    """The voxels every table of a run scores for `scenario`: one seed per scenario, so MAE and floor rows see the
    same draws."""
    return voxels(tables, protocol, n, scenario, snr, seed + {"single": 1, "crossing60": 2, "crossing90": 3}[scenario],
                  fw_max)


def mae_rows(model, tables: dict, protocol, n: int, n_fp: int, snr: float, seed: int,
             fw_max: float = VOXEL_FREE_WATER_MAX) -> list[dict]:
    """MAE ν / r / f, spurious free water, fractions above 1 and ms/voxel of every method and scenario on the
    voxels of `tables` (Monte-Carlo or analytic)."""
    from ..models import microstructure as ms

    rows = []
    for scenario in ("single", "crossing60", "crossing90"):
        vox = scenario_voxels(tables, protocol, n, scenario, snr, seed, fw_max)
        for method in ms.METHODS:
            k = min(n_fp, n) if method == "fingerprinting" else n
            # fingerprinting (slow) scores k voxels spread evenly over the scenario: both halves, with and without
            # free water, as the other methods see them
            pick = np.linspace(0, n - 1, k).round().astype(int)
            sub = {key: v[pick] for key, v in vox.items()}
            est = ms.estimate(model, sub["signal"], sub["u"], method)
            if scenario == "single":  # one bundle, both estimated populations along it: score the bundle as
                # their sum (ν) and ν-weighted means (r, f), whichever way a method splits it
                tot = np.maximum(est["nu"].sum(1), 1e-9)
                err = {p: float(np.mean(np.abs((est["nu"] * est[p]).sum(1) / tot - sub[p][:, 0])))
                       for p in ("r", "f")}
                err["nu"] = float(np.mean(np.abs(est["nu"].sum(1) - sub["nu"][:, 0])))
            else:
                err = {p: float(np.mean(np.abs(est[p] - sub[p]))) for p in ("nu", "r", "f")}
            no_fw = sub["nu_fw"] == 0
            total = est["nu"].sum(1) + est["nu_fw"]
            row = {"scenario": scenario, "method": method, "voxels": k, "snr": snr,
                   **{f"mae_{p}": round(err[p], 4) for p in ("nu", "r", "f")},
                   "mae_nu_fw": round(float(np.mean(np.abs(est["nu_fw"] - sub["nu_fw"]))), 4),
                   "spurious_fw": round(float(est["nu_fw"][no_fw].mean()), 4),
                   "fractions_above_1": int((total > 1 + 1e-6).sum()),
                   "ms_per_voxel": round(1e3 * est["seconds"] / k, 2)}
            if method == "hybrid" and scenario != "single":
                row.update(served_bound_ratio(protocol, sub, est, snr, model.extra_law))
            rows.append(row)
            logger.info(json.dumps(row))
    return rows


def served_bound_ratio(protocol, vox: dict, est: dict, snr: float, law=TORTUOSITY) -> dict:
    """How well the bound a bundle serves (Cramér–Rao at the estimate) stands for the bound at the truth, on
    crossings (two distinct populations): the median over the voxels of their ratio per parameter, and the share of
    voxels where it is within a factor 2; under the model's extra-axonal `law`, as its bundles serve it."""
    from ..data import diffusion as dif

    at_est = dif.cramer_rao(protocol, vox["u"], est["nu"], est["r"], est["f"], snr, law=law)
    at_true = dif.cramer_rao(protocol, vox["u"], vox["nu"], vox["r"], vox["f"], snr, law=law)
    out = {}
    for p in ("nu", "r", "f"):
        a, b = at_est[p].ravel(), at_true[p].ravel()
        with np.errstate(invalid="ignore", divide="ignore"):  # both unbounded: they agree
            ratio = np.where(np.isinf(a) & np.isinf(b), 1.0, a / b)
        ratio = np.where(np.isnan(ratio), np.inf, ratio)
        out[f"served_bound_ratio_{p}_median"] = round(float(np.median(ratio)), 3)
        out[f"served_bound_within_2x_{p}"] = round(float(((ratio >= 0.5) & (ratio <= 2)).mean()), 3)
    return out


#: the issue's aims for the hybrid's MAE on these voxels (SNR 30): the precision the served maps are judged by
AIMS = PRECISION_AIMS


def crlb_rows(tables: dict, protocol, n: int, snr: float, seed: int, fw_max: float = VOXEL_FREE_WATER_MAX,
              law=TORTUOSITY) -> list[dict]:
    """The floor of the MAE an unbiased estimator can reach on the same voxels as mae_rows (same draws):
    √(2/π) × the Cramér–Rao standard deviation (diffusion.cramer_rao: orientations and Σν + ν_fw = 1 known,
    Gaussian noise; the extra-axonal `law` of the model), per voxel and parameter (averaged over a crossing's two populations); median over the voxels
    and the share of voxels whose floor lies above the issue's aim (AIMS), and the SNR at which the median
    floor would reach the aim. An estimator below the floor is biased: its prior (training ranges, the
    dictionary's grid, the simplex) supplies what the signal does not. Beside it, the MAE of a constant at the
    scenario's median true value: what the prior alone gives."""
    from ..data import diffusion as dif

    rows = []
    for scenario in ("single", "crossing60", "crossing90"):
        vox = scenario_voxels(tables, protocol, n, scenario, snr, seed, fw_max)
        k = 1 if scenario == "single" else 2
        sd = dif.cramer_rao(protocol, vox["u"][:, :k], vox["nu"][:, :k], vox["r"][:, :k], vox["f"][:, :k], snr,
                            law=law)
        row: dict = {"scenario": scenario, "voxels": n, "snr": snr}
        for p in ("nu", "r", "f"):
            # the MAE of a constant: the scenario's own median of the true values (an oracle of the prior alone)
            truth = vox[p][:, :k]
            row[f"mae_constant_{p}"] = round(float(np.abs(truth - np.median(truth, 0)).mean()), 4)
            floor = mae_floor(sd[p].mean(1))
            row[f"mae_floor_{p}_median"] = round(float(np.median(floor)), 4)
            row[f"share_floor_{p}_above_aim"] = round(float((floor > AIMS[p]).mean()), 3)
            # the floor scales as 1/SNR: the SNR at which the median voxel's floor reaches the aim
            row[f"snr_for_aim_{p}"] = round(snr * float(np.median(floor)) / AIMS[p])
        rows.append(row)
        logger.info(json.dumps(row))
    return rows


def evaluate(out: Path, tables_path=TABLES, n: int = 240, n_fp: int = 30, n_train: int = 6000, epochs: int = 25,
             snr: float = 30.0, seed: int = 0, subsample: int | None = None,
             free_water_max: float | None = None, voxel_free_water_max: float = VOXEL_FREE_WATER_MAX,
             extra_axonal: str = "tortuosity") -> dict:
    """MAE tables of the three methods on the Monte-Carlo voxels and on the analytic model's, beside the
    Cramér–Rao floor; on the tables' protocol, or on HCP MGH subsampled by `subsample` (1: all 552 volumes; the
    tables hold every shell and timing, the directions are interpolated in cos²θ). `free_water_max`: the networks'
    training prior; `voxel_free_water_max`: the scored voxels' (half of them have none); `extra_axonal`: the
    extra-axonal law of the dictionary and the training simulations (data/diffusion/extra_axonal.py)."""
    import torch

    from ..data import diffusion as dif
    from ..models import microstructure as ms
    from ..training import microstructure as ms_training

    torch.set_num_threads(1)
    tables = load_tables(tables_path)
    if subsample is None:
        subsample = int(str(tables["meta"]["protocol"]).split("/")[-1]) if "/" in tables["meta"]["protocol"] else 1
    protocol = _protocol(subsample)
    torch.manual_seed(seed)  # the networks' initialisation (fit_networks seeds only what follows it)
    model = ms.Microstructure(protocol.to_config(), dif.paper_grid().to_config(), extra_axonal=extra_axonal)
    t0 = time.time()
    ranges = dif.SimulationRanges() if free_water_max is None else \
        dif.SimulationRanges(free_water=(0.0, float(free_water_max)))
    data = ms_training.simulate_training_set(model, n_train, (25, 50, 100), seed=seed, ranges=ranges)
    ms_training.fit_networks(model, data, epochs=epochs, batch_size=128, lr=2e-3, seed=seed)
    logger.info(f"trained MLP and hybrid on {n_train} analytic voxels in {time.time() - t0:.0f} s")
    fw_max = float(voxel_free_water_max)
    rows = mae_rows(model, tables, protocol, n, n_fp, snr, seed, fw_max)
    # the same voxels (r, f, orientations, fractions, noise) from the analytic model the methods are built on:
    # what is left there is noise and identifiability, not the forward model's gap to the walkers
    analytic = {**tables, **analytic_tables(protocol, tables["radii_um"], tables["achieved"], model.extra_law)}
    rows_analytic = mae_rows(model, analytic, protocol, n, n_fp, snr, seed, fw_max)
    # the walkers' intra-axonal signal with the analytic extra-axonal one: how much of the gap is the extra-axonal law
    rows_mixed = mae_rows(model, {**tables, "extra": analytic["extra"]}, protocol, n, n_fp, snr, seed, fw_max)
    result = {"command": f"python -m sparsesight.bench.microstructure_mc evaluate --out {out}"
                         + (f" --n {n}" if n != 240 else "") + (f" --n-fp {n_fp}" if n_fp != 30 else "")
                         + (f" --n-train {n_train}" if n_train != 6000 else "") + (f" --epochs {epochs}" if epochs != 25 else "")
                         + (f" --subsample {subsample}" if subsample != 4 else "")
                         + (f" --free-water-max {free_water_max:g}" if free_water_max is not None else "")
                         + (f" --voxel-free-water-max {fw_max:g}" if fw_max != VOXEL_FREE_WATER_MAX else "")
                         + (f" --extra-axonal {extra_axonal}" if extra_axonal != "tortuosity" else ""),
              "protocol": {"name": protocol.name, "m": protocol.m, "subsample": subsample},
              "tables": tables["meta"], "radii_um": [float(x) for x in tables["radii_um"]],
              "packings_achieved": np.round(tables["achieved"], 3).tolist(),
              "forward_gap": forward_gap(tables, protocol, model.extra_law),
              "apparent_dperp": apparent_dperp(tables, analytic if model.extra_law.name == "mc" else None),
              "mae": rows, "mae_analytic": rows_analytic, "mae_mc_intra_analytic_extra": rows_mixed,
              "crlb": crlb_rows(tables, protocol, n, snr, seed, fw_max, model.extra_law), "aims": AIMS,
              "voxel_free_water": [0.0, fw_max], "extra_axonal": model.extra_law.name,
              "train": {"n_train": n_train, "epochs": epochs, "grid": "paper 34 x 23",
                        "free_water": list(ranges.free_water)}}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "microstructure_mc.json").write_text(json.dumps(result, indent=1))
    return result


def laws_figure(runs: dict[str, dict]) -> bytes:
    """The hybrid's Monte-Carlo MAE per parameter and scenario for each recorded run (e.g. the tortuosity and the
    calibrated extra-axonal law on one protocol), beside the issue's aims and the Cramér–Rao MAE floor of each run:
    one panel per parameter (ν, r, f, spurious free water)."""
    from ..preview import png_bytes, pyplot

    plt = pyplot()
    scenarios = ("single", "crossing60", "crossing90")
    panels = (("mae_nu", "nu", "MAE ν"), ("mae_r", "r", "MAE r (µm)"), ("mae_f", "f", "MAE f"),
              ("spurious_fw", None, "spurious ν_fw"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2))
    width = 0.8 / len(runs)
    x = np.arange(len(scenarios))
    for ax, (key, floor_key, title) in zip(axes, panels):
        for i, (label, res) in enumerate(runs.items()):
            hybrid = {r["scenario"]: r for r in res["mae"] if r["method"] == "hybrid"}
            ax.bar(x + (i - (len(runs) - 1) / 2) * width, [hybrid[s][key] for s in scenarios], width, label=label)
            if floor_key:
                crlb = {c["scenario"]: c for c in res["crlb"]}
                ax.scatter(x + (i - (len(runs) - 1) / 2) * width,
                           [crlb[s][f"mae_floor_{floor_key}_median"] for s in scenarios], marker="_", s=200,
                           color="k", zorder=3)
        aim = AIMS.get(floor_key, 0.02) if floor_key else 0.02
        ax.axhline(aim, color="k", ls="--", lw=1)
        ax.set_xticks(x, ["single", "60°", "90°"])
        ax.set_title(title + ("  (dash: aim; bar tick: Cramér–Rao floor)" if key == "mae_nu" else ""), fontsize=8)
    axes[0].legend(fontsize=7)
    return png_bytes(fig)


def markdown_table(result: dict) -> list[str]:
    """The README's lines of a result: MAE per scenario and method, then the forward-model gap per radius."""
    lines = ["| scenario | method | voxels | MAE ν | MAE r (µm) | MAE f | spurious ν_fw | ν1+ν2+ν_fw > 1 | ms/voxel |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in result["mae"]:
        lines.append(f"| {x['scenario']} | {x['method']} | {x['voxels']} | {x['mae_nu']:.3f} | {x['mae_r']:.2f} | "
                     f"{x['mae_f']:.3f} | {x['spurious_fw']:.3f} | {x['fractions_above_1']} | {x['ms_per_voxel']:g} |")
    if result.get("mae_analytic"):
        lines += ["", "| scenario | method | MAE ν MC / analytic | MAE r (µm) MC / analytic | MAE f MC / analytic "
                      "| spurious ν_fw MC / analytic |", "|---|---|---|---|---|---|"]
        for x, y in zip(result["mae"], result["mae_analytic"]):
            lines.append(f"| {x['scenario']} | {x['method']} | {x['mae_nu']:.3f} / {y['mae_nu']:.3f} | "
                         f"{x['mae_r']:.2f} / {y['mae_r']:.2f} | {x['mae_f']:.3f} / {y['mae_f']:.3f} | "
                         f"{x['spurious_fw']:.3f} / {y['spurious_fw']:.3f} |")
    if result.get("crlb"):
        hybrid = {x["scenario"]: x for x in result["mae"] if x["method"] == "hybrid"}
        lines += ["", "| scenario | parameter | aim | Cramér–Rao MAE floor, median (voxels above the aim) | SNR for the aim "
                      "| constant at the median | hybrid, Monte Carlo |", "|---|---|---|---|---|---|---|"]
        for c in result["crlb"]:
            for p, name in (("nu", "ν"), ("r", "r (µm)"), ("f", "f")):
                lines.append(f"| {c['scenario']} | {name} | {result['aims'][p]:g} | {c[f'mae_floor_{p}_median']:.3f} "
                             f"({100 * c[f'share_floor_{p}_above_aim']:.0f} %) | {c[f'snr_for_aim_{p}']} | "
                             f"{c[f'mae_constant_{p}']:.3f} | {hybrid[c['scenario']][f'mae_{p}']:.3f} |")
    lines += ["", "| r (µm) | intra-axonal max abs gap | extra-axonal, f 0.30 | extra-axonal, f 0.45 |", "|---|---|---|---|"]
    for g in result["forward_gap"]:
        ex = [v for k, v in g.items() if k.startswith("extra")]
        lines.append(f"| {g['r_um']:g} | {g['intra_max_abs']:.4f} | {ex[0]:.4f} | {ex[1]:.4f} |")
    return lines


def main(argv=None) -> int:
    from . import setup_process

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    g = sub.add_parser("generate", help="Monte-Carlo tables with dmipy-sim (its own environment)")
    g.add_argument("--out", type=Path, default=TABLES)
    g.add_argument("--walkers", type=int, default=20000)
    g.add_argument("--subsample", type=int, default=4, help="HCP MGH protocol, every k-th volume per shell")
    x = sub.add_parser("generate-extra", help="extra-axonal calibration signals with dmipy-sim (its own environment)")
    x.add_argument("--out", type=Path, default=CALIBRATION_DIR / "packings.npz")
    x.add_argument("--packings", type=float, nargs="+", default=list(CAL_PACKINGS))
    x.add_argument("--walkers", type=int, default=20000)
    x.add_argument("--radii", type=float, nargs="+", default=list(CAL_RADII_UM), help="cylinder radii, µm")
    x.add_argument("--timing", type=float, nargs=2, default=list(CAL_TIMING_S), metavar=("DELTA", "delta"),
                   help="Δ and δ in s (default HCP's, the calibration's)")
    x.add_argument("--seed", type=int, default=CAL_SEED)
    f = sub.add_parser("plot", help="the hybrid's MAE of recorded runs beside the aims and the Cramér–Rao floor")
    f.add_argument("runs", nargs="+", help="LABEL=PATH of a microstructure_mc.json")
    f.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("calibrate", help="fit the extra-axonal gamma law to generate-extra files")
    c.add_argument("parts", type=Path, nargs="+")
    c.add_argument("--out", type=Path, default=None, help="default: the file the 'mc' law reads")
    t = sub.add_parser("check-timing", help="the calibrated law against walkers at another timing")
    t.add_argument("parts", type=Path, nargs="+")
    t.add_argument("--out", type=Path, default=None)
    e = sub.add_parser("evaluate", help="MAE tables of the three methods on the Monte-Carlo voxels")
    e.add_argument("--tables", type=Path, default=TABLES)
    e.add_argument("--out", type=Path, default=Path("out/bench"))
    e.add_argument("--n", type=int, default=240, help="voxels per scenario (MLP, hybrid, the Cramér–Rao floor)")
    e.add_argument("--n-fp", type=int, default=30, help="voxels per scenario for fingerprinting (slow)")
    e.add_argument("--n-train", type=int, default=6000)
    e.add_argument("--epochs", type=int, default=25)
    e.add_argument("--subsample", type=int, default=None,
                   help="HCP MGH every k-th volume (default: the tables' own, 4; 1 for all 552 volumes)")
    e.add_argument("--free-water-max", type=float, default=None,
                   help="train on free water uniform in [0, this] (default: the paper's range, 0-0.1)")
    e.add_argument("--voxel-free-water-max", type=float, default=VOXEL_FREE_WATER_MAX,
                   help="the scored voxels' free water, uniform in [0, this] in half of them (none in the others)")
    e.add_argument("--extra-axonal", default="tortuosity", choices=LAWS,
                   help="the dictionary's extra-axonal law (data/diffusion/extra_axonal.py)")
    a = ap.parse_args(argv)
    setup_process()
    if a.step == "generate":
        print(json.dumps(generate(a.out, a.walkers, a.subsample), indent=1))
        return 0
    if a.step == "plot":
        runs = {label: json.loads(Path(path).read_text()) for label, path in (r.split("=", 1) for r in a.runs)}
        a.out.write_bytes(laws_figure(runs))
        return 0
    if a.step == "calibrate":
        cal = calibrate(a.parts, a.out)
        print(json.dumps({k: cal[k] for k in ("fractions", "radii_um", "dperp_over_d", "kurtosis", "rms_log")}))
        return 0
    if a.step == "check-timing":
        print(json.dumps(check_timing(a.parts, a.out), indent=1))
        return 0
    if a.step == "generate-extra":
        print(json.dumps(generate_extra(a.out, tuple(a.packings), tuple(a.radii), walkers=a.walkers, seed=a.seed,
                                        timing_s=tuple(a.timing)), indent=1))
        return 0
    res = evaluate(a.out, a.tables, a.n, a.n_fp, a.n_train, a.epochs, subsample=a.subsample,
                   free_water_max=a.free_water_max, voxel_free_water_max=a.voxel_free_water_max,
                   extra_axonal=a.extra_axonal)
    print(json.dumps({"forward_gap": res["forward_gap"], "mae": res["mae"]}, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

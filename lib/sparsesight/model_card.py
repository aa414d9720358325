"""Model cards of shipped weights: `<name>.card.json` (what a program checks) and `<name>.card.md` (what a person
reads) beside `<name>.pt`.

A card says how the weights were made (data recipe, seeds, epochs, training config, commit), what they are
(model, config, parameter count, version, sha256 of the file) and what they score on a held-out split the training
never saw (Dice per region, explanation-quality figures), with the known limits. `verify` refuses a checkpoint
whose bytes, config or version do not match its card, so a swapped or damaged file is never served as the model
the card describes.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from .atomic import replace_atomically
from .errors import InvalidInput

CARD_SCHEMA = 1
#: the fields every card has (write() refuses a card without them)
REQUIRED = ("model", "version", "sha256", "config", "parameters", "training", "evaluation", "limits")


def card_path(pt_path, suffix: str = ".card.json") -> Path:
    """`<dir>/<name>.pt` -> `<dir>/<name>.card.json` (or `.card.md`)."""
    pt_path = Path(pt_path)
    return pt_path.with_name(pt_path.name.removesuffix(".pt") + suffix)


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read(pt_path) -> dict | None:
    """The card of checkpoint `pt_path`, None when it has none; InvalidInput when the card is not valid JSON."""
    path = card_path(pt_path)
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"model card {path.name} cannot be read: {e}") from None
    if not isinstance(card, dict):
        raise InvalidInput(f"model card {path.name} is not a JSON object")
    return card


def verify(pt_path, meta: dict, card: dict | None) -> None:
    """Refuse (InvalidInput with the reason) a checkpoint that does not match its card: the file's sha256, the
    model name, the config and the version computed from the loaded weights (`meta` from checkpoint.load)."""
    pt_path = Path(pt_path)
    if card is None:
        raise InvalidInput(f"{pt_path.name} has no model card ({card_path(pt_path).name}): shipped weights are "
                           f"served only with their card")
    digest = sha256_file(pt_path)
    if card.get("sha256") != digest:
        raise InvalidInput(f"{pt_path.name} does not match its model card: sha256 {digest[:12]}... is not the "
                           f"card's {str(card.get('sha256'))[:12]}...")
    for key in ("model", "version", "config"):
        if card.get(key) != meta.get(key):
            raise InvalidInput(f"{pt_path.name} does not match its model card: {key} differs")


def commit() -> str:
    """The short commit of the code that made the weights ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def retrained(name: str, model, config: dict, training: dict, evaluation: dict, previous: dict | None,
              data_limit: str) -> dict:
    """The card of weights retrained in the app on the datastore's labels (without version and sha256: the
    checkpoint holds the card, checkpoint.load recomputes the version, write() adds the file's sha256).
    `previous`: the card of the weights training started from (its run is kept as `continued_from`);
    `data_limit`: what the training data was, as a known limit."""
    training = dict(training)
    if previous and isinstance(previous.get("training"), dict):
        training["continued_from"] = {**{k: v for k, v in previous["training"].items() if k != "loss"},
                                      "version": previous.get("version"), "kind": previous.get("kind", "shipped")}
    limits = [data_limit]
    if not evaluation.get("dice"):
        limits.append(f"no held-out evaluation: {evaluation.get('data', 'no image was held out')}; the Dice of "
                      f"these weights is unknown")
    return {"kind": "retrained", "model": name, "config": config,
            "description": (type(model).__doc__ or name).strip().splitlines()[0],
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "training": training, "evaluation": evaluation, "limits": limits}


def _table(rows: dict) -> list[str]:
    found = list(next(iter(rows.values())).keys()) if rows else []
    regions = [r for r in ("WT", "TC", "ET") if r in found] + [r for r in found if r not in ("WT", "TC", "ET")]
    out = ["| split | " + " | ".join(regions) + " |", "|---|" + "---|" * len(regions)]
    for split, dice in rows.items():
        out.append(f"| {split} | " + " | ".join(f"{dice[r]:.3f}" for r in regions) + " |")
    return out


def markdown(card: dict) -> str:
    """The card for people: what the model is, how it was made, what it scores and where it fails."""
    t, ev = card["training"], card["evaluation"]
    kind = {"retrained": "retrained in the app", "null": "null model of the data-randomisation check"}.get(
        card.get("kind", ""), "shipped weights")
    lines = [f"# Model card: `{card['model']}` ({kind})", "",
             card.get("description", ""), "",
             f"- version `{card['version']}`, file sha256 `{card['sha256']}`",
             f"- {card['parameters']:,} learned parameters; config: `{json.dumps(card['config'], sort_keys=True)}`",
             f"- made by `{t.get('command', '?')}` at commit `{t.get('commit', '?')}`",
             "", "## Training", "",
             f"- data: {t.get('data', '?')}",
             f"- {t.get('epochs', '?')} epochs ("
             + (f"best validation epoch {t.get('best_epoch', '?')}" if t.get("best_epoch", "?") is not None else
                "no validation: the last epoch kept") + "), seed "
             f"{t.get('seed', '?')}, {t.get('seconds', '?')} s on {t.get('device', '?')}",
             f"- recipe: `{json.dumps(t.get('config', {}), sort_keys=True)}`"]
    for e in earlier_runs(t):
        lines += [f"- continued from `{e.get('version')}`: {e.get('epochs')} epochs (best {e.get('best_epoch')}) "
                  f"of `{e.get('command')}`, recipe `{json.dumps(e.get('config', {}), sort_keys=True)}`"]
    lines += ["", "## Held-out evaluation (Dice per BraTS region)", "", f"{ev.get('data', '')}", ""]
    lines += _table(ev["dice"]) if ev.get("dice") else ["No held-out evaluation."]
    if ev.get("quality"):
        lines += ["", "Explanation quality on the held-out cases: " +
                  ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in ev["quality"].items())]
    if ev.get("readout_grid_ceiling"):
        c = ev["readout_grid_ceiling"]
        lines += ["", f"The logits live on a grid {c['factor']}x coarser than the input's; the held-out labels "
                      "themselves, averaged onto that grid and upsampled back, keep Dice "
                      + ", ".join(f"{k} {c['dice'][k]:.3f}" for k in ("WT", "TC", "ET") if k in c["dice"])
                      + " (metrics.grid_ceiling_dice)."]
    lines += ["", "## Known limits", ""] + [f"- {x}" for x in card["limits"]]
    return "\n".join(lines) + "\n"


def earlier_runs(training: dict) -> list[dict]:
    """The runs the weights went through before the last one (`continued_from`, nested), latest first."""
    out, e = [], training.get("continued_from")
    while e:
        out.append(e)
        e = e.get("continued_from")
    return out


def write(pt_path, card: dict) -> None:
    """Write `card` (with the file's sha256 filled in) as JSON and Markdown beside `pt_path`, atomically."""
    card = {"schema": CARD_SCHEMA, **card, "sha256": sha256_file(pt_path)}
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise ValueError(f"model card without {', '.join(missing)}")
    replace_atomically(card_path(pt_path), (json.dumps(card, indent=1, sort_keys=True) + "\n").encode())
    replace_atomically(card_path(pt_path, ".card.md"), markdown(json.loads(json.dumps(card, sort_keys=True))).encode())


def summary(card: dict) -> dict:
    """What /info shows of a card: version, held-out Dice, the training recipe in one line, the limits."""
    t, ev = card.get("training", {}), card.get("evaluation", {})
    return {"kind": card.get("kind", "shipped"), "version": card.get("version"), "dice": ev.get("dice", {}), "evaluated_on": ev.get("data"),
            "trained_on": t.get("data"), "epochs": t.get("epochs"), "commit": t.get("commit"),
            "limits": card.get("limits", [])}


def readme_table(cards: dict) -> list[str]:
    """The README's table of the shipped weights: one row per card and evaluation split (a test checks the README
    quotes it)."""
    rows = ["| model | version | epochs (best) | held-out split | WT | TC | ET | explanation figures |",
            "|---|---|---|---|---|---|---|---|"]
    for name, c in cards.items():
        t, ev = c["training"], c["evaluation"]
        q = ", ".join(f"{k} {v}" for k, v in ev.get("quality", {}).items())
        epochs = " + ".join([str(e["epochs"]) for e in reversed(earlier_runs(t))] +
                            [f"{t['epochs']} ({t.get('best_epoch')})"])
        for i, (split, d) in enumerate(ev["dice"].items()):
            rows.append(f"| `{name}` | `{c['version']}` | {epochs} | {split} | {d['WT']:.3f} | {d['TC']:.3f} | "
                        f"{d['ET']:.3f} | {q if i == 0 else ''} |")
    return rows


def off_grid_case_table(cards: dict) -> list[str]:
    """Per off-grid case (its grid in the header), the Dice of each card: where a recipe gains or loses."""
    first = next(iter(cards.values()))["evaluation"]["per_case_off_grid"]
    rows = ["| model | " + " | ".join(f"{r['case']} WT / TC / ET" for r in first) + " |",
            "|---|" + "---|" * len(first)]
    for name, c in cards.items():
        cases = c["evaluation"]["per_case_off_grid"]
        rows.append(f"| `{name}` | " + " | ".join(f"{r['WT']:.3f} / {r['TC']:.3f} / {r['ET']:.3f}" for r in cases)
                    + " |")
    return rows

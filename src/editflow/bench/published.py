"""A protocol run in the papers' units, and beside the numbers the papers published.

* :func:`protocol_markdown`: per method, the mean of each protocol metric times its ``scale``
  (``editflow/assets/protocols/NAME.yaml``), the columns in the protocol's order;
* :func:`published_markdown` (``bench report DIR --compare-published``): per method of the run,
  every published row of the same method and model family
  (``editflow/assets/published/NAME.yaml``) as ``ours / theirs (ours - theirs)`` per column, with
  who reported it, whether we read it second-hand, and on which subset.

Only the records made under a protocol are read: one protocol file (the copy the run kept as
``DIR/protocol.yaml``, or the packaged one of that name and digest) and one model; a folder that
mixes them is refused.
"""

from __future__ import annotations

import math
from collections import defaultdict
from importlib import resources

import numpy as np

from ..errors import EditflowError
from pathlib import Path

from .protocol import KEPT, PACKAGED, Protocol, load_protocol


def run_protocol(rows: list[dict], root: Path) -> Protocol | None:
    """The protocol of a run's records (None when they have none), from the copy the run kept in
    ``root`` or the packaged one with the records' digest; mixed protocols or models are refused."""
    tagged = [r for r in rows if r.get("protocol")]
    tags = {(r["protocol"]["name"], r["protocol"]["version"], r["protocol"].get("digest")) for r in tagged}
    if not tags:
        return None
    if len(tags) > 1:
        raise EditflowError(f"{root} mixes runs of protocols {sorted(tags, key=repr)}: report each in its own --out folder")
    models = sorted({(r["model"], r.get("family")) for r in tagged})
    if len(models) > 1:
        raise EditflowError(f"{root} holds protocol runs of several models {models}: report each in its own --out folder")
    (name, version, digest), = tags
    candidates = ([root / KEPT] if (root / KEPT).is_file() else []) + ([name] if name in PACKAGED else [])
    for source in candidates:
        protocol = load_protocol(source)
        if (protocol.name, protocol.version, protocol.digest) == (name, version, digest):
            return protocol
    raise EditflowError(f"the records in {root} were made under protocol {name} v{version} (digest {digest}), and "
                        f"neither {root / KEPT} nor this editflow's {name} is that file: report them with the "
                        "editflow and protocol file that made them")


def columns(protocol: Protocol) -> list[tuple[str, str, float]]:
    """``(metric, header, scale)`` per protocol metric: ``Structure x10^3``, ``PSNR`` ..."""
    out = []
    for name, spec in protocol.metrics.items():
        unit = str(spec["unit"])
        out.append((name, f"{spec['column']} {unit}" if unit.startswith("x") else spec["column"], float(spec["scale"])))
    return out


def _mean(values) -> float:
    x = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(x)) if x else math.nan


def method_means(rows: list[dict], protocol: Protocol) -> dict[str, dict]:
    """Per method (baselines marked), over the protocol's records: n, family, NFE, each metric's
    mean in the papers' units (finite values), and ``inf_psnr``: items whose background was
    returned unchanged (PSNR infinite; left out of the PSNR mean)."""
    groups = defaultdict(list)
    for r in (r for r in rows if r.get("protocol")):
        groups[f"{r['method']} (baseline)" if r.get("baseline") else r["method"]].append(r)
    out = {}
    for label, members in groups.items():
        cell = {"n": len(members), "family": members[0].get("family"), "method": members[0]["method"],
                "nfe": _mean([r["nfe_calls"] for r in members])}
        for name, _, scale in columns(protocol):
            cell[name] = _mean([r["metrics"].get(name) for r in members]) * scale
        cell["inf_psnr"] = sum(r["metrics"].get("psnr_unedit_part") == "inf" for r in members)
        out[label] = cell
    return dict(sorted(out.items(), key=lambda kv: (kv[0].endswith("(baseline)"), kv[0])))


def _fmt(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.2f}"


def coverage(rows: list[dict], protocol: Protocol) -> str:
    """Which items the run holds, against the protocol's subsets: ``the whole subset all`` when
    every method (baselines aside) scored exactly that subset's items and categories, else what
    is there and that it is not comparable to a paper's table."""
    tagged = [r for r in rows if r.get("protocol")]
    n = len({r["item"] for r in tagged})
    cats = sorted({str(r.get("category", "?")) for r in tagged})
    types = {str(r.get("editing_type")) for r in tagged}
    per_method = defaultdict(set)
    for r in tagged:
        if not r.get("baseline"):
            per_method[r["method"]].add(r["item"])
    whole = [name for name, spec in protocol.raw["data"]["subsets"].items()
             if types == {str(c) for c in spec["categories"]}
             and all(len(items) == spec["items"] for items in per_method.values())]
    text = f"{n} items, model {tagged[0]['model']}"
    if whole:
        return text + f" (the whole subset {' / '.join(whole)}, every method on all of it)"
    return text + (f", categories {', '.join(cats)}: not a whole subset of the protocol for every method, so not "
                   "comparable to a paper's table")


def protocol_markdown(rows: list[dict], protocol: Protocol) -> str:
    cols = columns(protocol)
    means = method_means(rows, protocol)
    out = [f"## Protocol {protocol.name} v{protocol.version}, in the papers' units", "",
           f"{coverage(rows, protocol)}. Means over the items with a finite value (a background metric is left out "
           "where the mask covers the whole image, and PSNR where the background came back unchanged).", "",
           "| method | n | NFE | " + " | ".join(h for _, h, _ in cols) + " | PSNR inf |", "| --- " * (4 + len(cols)) + "|"]
    for label, cell in means.items():
        out.append(f"| {label} | {cell['n']} | {cell['nfe']:.0f} | " + " | ".join(_fmt(cell[m]) for m, _, _ in cols)
                   + f" | {cell['inf_psnr']} |")
    return "\n".join(out) + "\n"


def load_published(name: str) -> list[dict]:
    """The packaged published numbers of protocol ``name``: rows with ``values`` keyed by metric."""
    import yaml

    path = resources.files("editflow") / "assets" / "published" / f"{name}.yaml"
    if not path.is_file():
        raise EditflowError(f"editflow has no published numbers for protocol {name!r}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    keys = data["keys"]
    return [dict(row, values={k: (math.nan if v is None else float(v)) for k, v in zip(keys, row["values"])})
            for row in data["rows"]]


def published_markdown(rows: list[dict], root: Path) -> str:
    """Each method of the run beside every published row of that method and family."""
    protocol = run_protocol(rows, root)
    if protocol is None:
        raise EditflowError("--compare-published needs a run made under a protocol: run `editflow bench run "
                            "--protocol pie-bench ...` first")
    cols = columns(protocol)
    means = method_means(rows, protocol)
    published = load_published(protocol.name)
    out = [f"# {protocol.name} v{protocol.version}: this run beside the published numbers", "",
           f"This run: {coverage(rows, protocol)}. Each cell is ours / theirs (ours - theirs) in the papers' units. "
           "Second-hand: we read the number in a third party's summary, "
           "not in the source named; check it there before quoting it. Subset 620 = without the style category; "
           "'?' = the source does not say. Differences in steps, guidance and subset move these numbers a lot "
           "(shared/references/frontier.md, A.2).", "",
           "| method | their row | reported by | second-hand | subset | their settings | "
           + " | ".join(h for _, h, _ in cols) + " |", "| --- " * (6 + len(cols)) + "|"]
    found = False
    for label, cell in means.items():
        if label.endswith("(baseline)"):
            continue
        for row in published:
            if row["method"] != cell["method"] or row["family"] != cell["family"]:
                continue
            found = True
            cells = []
            for m, _, _ in cols:
                ours, theirs = cell[m], row["values"][m]
                cells.append("-" if not math.isfinite(theirs) else f"{_fmt(ours)} / {theirs:.2f} ({ours - theirs:+.2f})")
            out.append(f"| {label} | {row['label']} | {row['reported_by']} | {'yes' if row['second_hand'] else 'no'} | "
                       f"{row['subset'] or '?'} | {row.get('settings') or '-'} | " + " | ".join(cells) + " |")
    if not found:
        out.append(f"| (no published row for {', '.join(c['method'] for c in means.values())} on "
                   f"{', '.join(sorted({str(c['family']) for c in means.values()}))}) |" + " |" * (5 + len(cols)))
    families = {c["family"] for c in means.values()}
    context = [row for row in published if row["method"] is None and row["family"] in families]
    if context:
        out += ["", "Published methods editflow does not have, for context: "
                + "; ".join(f"{row['label']} ({row['reported_by']})" for row in context) + "."]
    return "\n".join(out) + "\n"

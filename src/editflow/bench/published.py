"""A protocol run in the papers' units, and beside the numbers the papers published.

* :func:`protocol_markdown`: per method, the mean of each protocol metric times its ``scale``
  (``editflow/assets/protocols/NAME.yaml``), the columns in the protocol's order;
* :func:`published_markdown` (``bench report DIR --compare-published``): per method of the run,
  every published row of the same method and model family
  (``editflow/assets/published/NAME.yaml``) as ``ours / theirs (ours - theirs)`` per column, with
  who reported it, whether we read it second-hand, and on which subset.

Only records made under one protocol and version are read; a run that mixes versions is refused.
"""

from __future__ import annotations

import math
from collections import defaultdict
from importlib import resources

import numpy as np

from ..errors import EditflowError
from .protocol import Protocol, load_protocol


def run_protocol(rows: list[dict]) -> Protocol | None:
    """The protocol of a run's records (None when they have none); mixed versions are refused."""
    tags = {(r["protocol"]["name"], r["protocol"]["version"]) for r in rows if r.get("protocol")}
    if not tags:
        return None
    if len(tags) > 1:
        raise EditflowError(f"this run mixes protocol versions {sorted(tags)}: report each in its own --out folder")
    (name, version), = tags
    protocol = load_protocol(name)
    if protocol.version != version:
        raise EditflowError(f"the records were made under {name} v{version} and this editflow has v{protocol.version}: "
                            "report them with the editflow that made them")
    return protocol


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
    """Per method (baselines marked): n, family, NFE and each metric's mean in the papers' units."""
    groups = defaultdict(list)
    for r in rows:
        groups[f"{r['method']} (baseline)" if r.get("baseline") else r["method"]].append(r)
    out = {}
    for label, members in groups.items():
        cell = {"n": len(members), "family": members[0].get("family"), "method": members[0]["method"],
                "nfe": _mean([r["nfe_calls"] for r in members])}
        for name, _, scale in columns(protocol):
            cell[name] = _mean([r["metrics"].get(name) for r in members]) * scale
        out[label] = cell
    return dict(sorted(out.items(), key=lambda kv: (kv[0].endswith("(baseline)"), kv[0])))


def _fmt(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.2f}"


def protocol_markdown(rows: list[dict], protocol: Protocol) -> str:
    cols = columns(protocol)
    cats = sorted({r.get("category", "?") for r in rows})
    out = [f"## Protocol {protocol.name} v{protocol.version}, in the papers' units", "",
           f"{len({r['item'] for r in rows})} items, categories: {', '.join(cats)}. Means over the items with a "
           "finite value (a background metric is left out where the mask covers the whole image).", "",
           "| method | n | NFE | " + " | ".join(h for _, h, _ in cols) + " |", "| --- " * (3 + len(cols)) + "|"]
    for label, cell in method_means(rows, protocol).items():
        out.append(f"| {label} | {cell['n']} | {cell['nfe']:.0f} | " + " | ".join(_fmt(cell[m]) for m, _, _ in cols) + " |")
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


def published_markdown(rows: list[dict]) -> str:
    """Each method of the run beside every published row of that method and family."""
    protocol = run_protocol(rows)
    if protocol is None:
        raise EditflowError("--compare-published needs a run made under a protocol: run `editflow bench run "
                            "--protocol pie-bench ...` first")
    cols = columns(protocol)
    means = method_means(rows, protocol)
    published = load_published(protocol.name)
    n_items = len({r["item"] for r in rows})
    out = [f"# {protocol.name} v{protocol.version}: this run beside the published numbers", "",
           f"Each cell is ours / theirs (ours - theirs) in the papers' units; ours is the mean over this run's "
           f"{n_items} items, model {rows[0]['model']}. Second-hand: we read the number in a third party's summary, "
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

"""The report in ``<output_dir>/inspect/``: report.md with its pictures, a CSV per finding, summary.json, and the lines the terminal shows.

Files: ``label_issues.csv`` (the flagged images of each checked part, most suspect first),
``duplicates.csv`` (leaked pairs first, then the pairs inside each part, most similar
first), ``outliers.csv``, ``class_balance.csv``, ``summary.json`` (the counts, settings and
timings; written last), ``report.md``, and
``label_issues_PART.png``, ``duplicates.png``, ``outliers.png``, ``class_balance.png``,
``similarity.png``. A rerun replaces these files and removes those of the same kind that
it does not write again (a part no longer checked), nothing else.
"""

from __future__ import annotations

import csv
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from finetune.evaluation import plots
from finetune.inspection import pictures
from finetune.inspection.duplicates import Pair
from finetune.inspection.parts import MULTI_LABEL_NOTE
from finetune.training.run_files import INSPECT_FILES
from finetune.utils.files import replacing, write_json, write_text

#: What the report writes, as patterns, for removing an earlier report's leftovers; the
#: manifest's rules count the same names as the report's (a file of another name is the user's).
OWN_FILES = INSPECT_FILES


def slug(name: str) -> str:
    """A part's name as part of a file name: ``eval set night`` → ``eval-set-night``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "part"


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with replacing(path, binary=False) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _p(x: float) -> str:
    return f"{x:.4f}"


# ------------------------------------------------------------------------- the rows


def issue_rows(findings, part_index: int) -> list[dict[str, Any]]:
    """The flagged images of a checked part, most suspect first, as the CSV has them."""
    part, issues = findings.parts[part_index], findings.issues[part_index]
    probs = findings.probabilities[part_index]
    names = findings.class_names
    out = []
    ranked = issues.flagged_ranked
    for rank, (i, where) in enumerate(zip(ranked, part.describe(ranked)), start=1):
        given, suggested = int(part.labels[i]), int(issues.suggested[i])
        out.append({
            "part": part.name, "rank": rank, **where, "index": int(i),
            "given_label": names[given], "suggested_label": names[suggested],
            "p_given": float(probs[i, given]), "p_suggested": float(probs[i, suggested]),
            "score": float(issues.score[i]),
        })
    return out


def pair_rows(findings, pairs: list[Pair]) -> list[dict[str, Any]]:
    """The pairs as the CSV has them: where, kind, view, similarity, and both images."""
    found: dict[tuple[int, int], dict[str, Any]] = {}
    for k, part in enumerate(findings.parts):
        wanted = sorted({p.a for p in pairs if p.part_a == k} | {p.b for p in pairs if p.part_b == k})
        for i, where in zip(wanted, part.describe(wanted)):
            found[(k, i)] = {**where, "part": part.name, "label": part.label_text(i), "index": i}
    out = []
    for pair in pairs:
        a, b = findings.parts[pair.part_a], findings.parts[pair.part_b]
        out.append({
            "where": f"within {a.name}" if pair.part_a == pair.part_b else f"{a.name} → {b.name}",
            "kind": pair.kind, "view": pair.view, "similarity": pair.similarity,
            "a": found[(pair.part_a, pair.a)], "b": found[(pair.part_b, pair.b)],
            "same_label": a.same_label(pair.a, b, pair.b),
        })
    return out


def all_pairs(findings) -> list[Pair]:
    """Leaked pairs first (eval part by eval part), then each part's own."""
    pairs = [p for i in sorted(findings.leaks) for p in findings.leaks[i][1]]
    return pairs + [p for i in sorted(findings.within) for p in findings.within[i].pairs]


def outlier_indices(findings, part_index: int) -> tuple[np.ndarray, np.ndarray]:
    """A part's images below the fence, and its ``top`` lowest (flagged or not), lowest first."""
    sims = findings.centres[part_index].similarity
    order = np.argsort(sims, kind="stable")
    flagged = order[sims[order] < findings.fence]
    shown = order[: max(findings.options.top, len(flagged))]
    return flagged, shown


# --------------------------------------------------------------------------- summary


def summary(findings) -> dict[str, Any]:
    """summary.json: the settings, the counts of every finding, and the timings."""
    r, o, names = findings.recipe, findings.options, findings.class_names
    parts = []
    for i, part in enumerate(findings.parts):
        entry: dict[str, Any] = {"name": part.name, "role": part.role, "images": len(part)}
        counts = part.class_counts()
        entry["class_counts"] = {names[c]: int(counts[c]) for c in range(len(names))}
        present = counts[counts > 0]
        entry["imbalance_ratio"] = float(present.max() / present.min()) if len(present) else None
        if i in findings.issues:
            issues = findings.issues[i]
            entry["label_issues"] = {
                "flagged": int(issues.flagged.sum()),
                "estimated_errors": issues.estimated_errors,
                "probe_accuracy": float((issues.suggested == part.labels).mean()) if len(part) else None,
                "most_confused": confused_pairs(issues, names, 5),
            }
        within = findings.within[i]
        exact = [p for p in within.pairs if p.kind == "exact"]
        near = [p for p in within.pairs if p.kind == "near"]
        entry["duplicates"] = {
            "exact_pairs": len(exact), "near_pairs": len(near),
            "images_with_a_duplicate": len({p.a for p in within.pairs} | {p.b for p in within.pairs}),
        }
        if i in findings.leaks:
            leaks, _ = findings.leaks[i]
            entry["leaked_from_training"] = {
                "images": int(leaks.leaked.sum()), "exact": int(leaks.exact.sum()),
                "near": int((leaks.leaked & ~leaks.exact).sum()),
                "share": float(leaks.leaked.mean()) if len(part) else 0.0,
            }
        flagged, _ = outlier_indices(findings, i)
        entry["outliers"] = int(len(flagged))
        parts.append(entry)
    return {
        "tool": "finetune inspect",
        "written": datetime.now().isoformat(timespec="seconds"),
        "recipe": {"description": r.description, "dataset": r.data.dataset, "output_dir": r.output_dir},
        "backbone": {
            "model": r.model.name_or_path, "revision": r.model.revision, "pretrained": True,
            "runtime": findings.backbone.runtime, "mirror": findings.backbone.mirror,
            "images_passed": findings.backbone.images, "seconds": round(findings.backbone.seconds, 2),
            "dimension": int(findings.parts[0].features.shape[1]),
        },
        "settings": {
            "folds": o.folds, "seed": o.seed, "top": o.top, "threshold": o.threshold, "split": o.split,
            "mirror": o.mirror, "batch_size": o.batch_size, "probe_l2": findings.oof.l2 if findings.oof else None,
            "probe_l2_tried": {f"{k:g}": round(v, 5) for k, v in findings.oof.cross_entropy.items()} if findings.oof else {},
            "outlier_fence": findings.fence,
        },
        "classes": names,
        "parts": parts,
        "notes": findings.notes,
        "seconds": findings.seconds,
    }


def confused_pairs(issues, names: list[str], limit: int) -> list[dict[str, Any]]:
    """The largest off-diagonal cells of the confident joint: images labelled one class that
    the probe confidently puts in another."""
    joint = issues.joint.copy()
    np.fill_diagonal(joint, 0)
    order = np.argsort(-joint, axis=None, kind="stable")[:limit]
    out = []
    for flat in order:
        i, j = divmod(int(flat), joint.shape[1])
        if joint[i, j] > 0:
            out.append({"given": names[i], "probably": names[j], "images": int(joint[i, j])})
    return out


def write_summary(folder: Path, findings) -> None:
    write_json(folder / "summary.json", summary(findings))


# ---------------------------------------------------------------------------- files


def write(folder: Path, findings) -> None:
    """Every file of the report but summary.json (see :func:`write_summary`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_file() and OWN_FILES.match(old.name) and old.name != "summary.json":
            old.unlink()
    names = findings.class_names
    labels = plots.class_labels(names)
    top = findings.options.top

    issue_header = ["part", "rank", "split", "row", "source", "given_label", "suggested_label", "p_given", "p_suggested", "score"]
    issues = {i: issue_rows(findings, i) for i in sorted(findings.issues)}
    _write_csv(folder / "label_issues.csv", issue_header,
               [[r[k] if not isinstance(r[k], float) else _p(r[k]) for k in issue_header] for rows in issues.values() for r in rows])
    for i, rows in issues.items():
        part = findings.parts[i]
        cells = [
            (part.pixels_of(r["index"]),
             f"{r['split']} #{r['row']}\n{_name(labels, names, r['given_label'])} → {_name(labels, names, r['suggested_label'])}\n"
             f"p {r['p_given']:.2f} → {r['p_suggested']:.2f}", "firebrick")
            for r in rows[:top]
        ]
        title = f"{part.name}: the {len(cells)} most likely label errors of {len(rows)} flagged ({len(part)} images); given → suggested"
        pictures.save(pictures.grid(cells, title, labels, f"{part.name}: no likely label errors"), folder / f"label_issues_{slug(part.name)}.png")

    pairs = all_pairs(findings)
    pair_list = pair_rows(findings, pairs)
    side = ["part", "split", "row", "source", "label"]
    _write_csv(
        folder / "duplicates.csv",
        ["where", "kind", "view", "similarity", *[f"{k}_a" for k in side], *[f"{k}_b" for k in side], "same_label"],
        [[r["where"], r["kind"], r["view"], _p(r["similarity"]), *[r["a"][k] for k in side], *[r["b"][k] for k in side], r["same_label"]] for r in pair_list],
    )
    cells = []
    for p, r in zip(pairs[:top], pair_list[:top]):
        a, b = findings.parts[p.part_a], findings.parts[p.part_b]
        caption = (f"{r['where']}: {p.kind} ({p.view} {p.similarity:.3f})\n{r['a']['split']} #{r['a']['row']} "
                   f"{_names(labels, names, r['a']['label'])} | {r['b']['split']} #{r['b']['row']} {_names(labels, names, r['b']['label'])}")
        cells.append((pictures.side_by_side(a.pixels_of(p.a), b.pixels_of(p.b)), caption, "firebrick" if p.part_a != p.part_b else "black"))
    pictures.save(
        pictures.grid(cells, f"Closest duplicate pairs ({len(pairs)} in all; leaks from training first)", labels,
                      "no duplicates at this threshold", wide=True),
        folder / "duplicates.png",
    )

    outlier_rows, cells = [], []
    for i, part in enumerate(findings.parts):
        flagged, shown = outlier_indices(findings, i)
        c = findings.centres[i]
        for j, where in zip(shown, part.describe(shown)):
            outlier_rows.append([part.name, *where.values(), part.label_text(j), names[int(c.nearest_class[j])],
                                 _p(c.similarity[j]), _p(c.own[j]), bool(c.similarity[j] < findings.fence)])
    ranked = sorted(((findings.centres[i].similarity[j], i, int(j)) for i in findings.centres for j in outlier_indices(findings, i)[1]))
    for sim, i, j in ranked[:top]:
        part = findings.parts[i]
        cells.append((part.pixels_of(j), f"{part.split_of(j)} #{part.row_of(j)} {_names(labels, names, part.label_text(j))}\n"
                      f"nearest centre {sim:.3f}{' (outlier)' if sim < findings.fence else ''}", "black"))
    _write_csv(folder / "outliers.csv", ["part", "split", "row", "source", "label", "nearest_class", "centre_similarity", "own_class_similarity", "flagged"], outlier_rows)
    pictures.save(pictures.grid(cells, f"Farthest from every class centre (outlier below {findings.fence:.3f})", labels, "no images"), folder / "outliers.png")

    counts = [(part.name, part.class_counts()) for part in findings.parts]
    _write_csv(folder / "class_balance.csv", ["class", *[n for n, _ in counts]], [[names[c], *[int(k[c]) for _, k in counts]] for c in range(len(names))])
    pictures.save(pictures.balance_figure(counts, labels), folder / "class_balance.png")

    series = []
    for i, part in enumerate(findings.parts):
        for view, values in findings.within[i].nearest.items():
            series.append((f"{view}: within {part.name}", values))
    for i, (leaks, _) in findings.leaks.items():
        for view, values in zip(("pixels", "features"), leaks.per_view):
            series.append((f"{view}: {findings.parts[i].name} → {findings.parts[0].name}", values))
    pictures.save(pictures.similarity_figure(series, findings.options.threshold), folder / "similarity.png")
    write_text(folder / "report.md", markdown(findings, issues, pair_list))


def _name(labels, names: list[str], name: str) -> str:
    """A class's name as the pictures write it (``#i`` where no font can draw it)."""
    return labels.text[names.index(name)]


def _names(labels, names: list[str], given: str) -> str:
    """A given label as the pictures write it: a class, or a multi-label image's classes
    (joined by ";"; "no class" for none)."""
    if given in names:
        return _name(labels, names, given)
    return ";".join(_name(labels, names, n) for n in given.split(";")) if given else "no class"


# ------------------------------------------------------------------------- markdown


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(findings, issues: dict[int, list[dict[str, Any]]], pair_rows: list[dict[str, Any]]) -> str:
    s = summary(findings)
    o, top, names = findings.options, findings.options.top, findings.class_names
    b = s["backbone"]
    parts = findings.parts
    lines = [
        f"# Data inspection: {findings.recipe.description.splitlines()[0] if findings.recipe.description else findings.recipe.data.dataset}",
        "",
        f"`finetune inspect` of `{findings.recipe.data.dataset}`, {s['written']}. Features: the pretrained "
        f"`{b['model']}` (not fine-tuned), {b['dimension']} numbers per image"
        f"{', averaged over each image and its mirror image' if b['mirror'] else ''}; "
        f"{b['images_passed']:,} images passed in {b['seconds']:.0f} s ({b['runtime']}). Whole inspection: "
        f"{findings.seconds.get('total', sum(findings.seconds.values())):.0f} s.",
        "",
        _table(["part", "role", "images", "flagged labels", "duplicate images inside", "leaked from training", "outliers"], [
            [p["name"], p["role"], f"{p['images']:,}",
             f"{p['label_issues']['flagged']:,}" if "label_issues" in p else "not checked",
             f"{p['duplicates']['images_with_a_duplicate']:,}",
             f"{p['leaked_from_training']['images']:,} ({100 * p['leaked_from_training']['share']:.1f}%)" if "leaked_from_training" in p else "",
             f"{p['outliers']:,}"]
            for p in s["parts"]
        ]),
        "",
        "## Likely label errors",
        "",
        *([f"Not checked: {MULTI_LABEL_NOTE}.", ""] if findings.oof is None else []),
    ]
    if findings.oof is not None:
        lines += [
            f"Out-of-fold class probabilities from a {o.folds}-fold (stratified, seed {o.seed}) logistic-regression probe on "
            f"the features (L-BFGS, λ = {findings.oof.l2:g}, chosen by out-of-fold cross-entropy among "
            f"{', '.join(f'{k:g}' for k in findings.oof.cross_entropy)}); the eval split and eval sets are scored by one probe "
            "fitted on the training split. Confident learning (Northcutt et al. 2021): an image is flagged when the "
            "probe is confident it is another class, ranked by the probability of its given label relative to that "
            "class's average (most suspect first). A flagged image is a candidate to look at, not a verdict: where the "
            "probe's own accuracy is low, many are merely hard images.",
            "",
        ]
    for i, rows in issues.items():
        p = s["parts"][i]
        li = p["label_issues"]
        confused = ", ".join(f"{c['given']} → {c['probably']} ({c['images']})" for c in li["most_confused"]) or "none"
        lines += [
            f"### {parts[i].name}: {li['flagged']:,} of {p['images']:,} images flagged ({100 * li['flagged'] / max(p['images'], 1):.1f}%)",
            "",
            f"The probe's accuracy on these images: {100 * (li['probe_accuracy'] or 0):.1f}%. Most often mixed up "
            f"(given → probably): {confused}.",
            "",
            f"![label issues](label_issues_{slug(parts[i].name)}.png)",
            "",
            _table(["rank", "split", "row", "source", "given", "suggested", "p(given)", "p(suggested)"],
                   [[r["rank"], r["split"], r["row"], r["source"], r["given_label"], r["suggested_label"], f"{r['p_given']:.3f}", f"{r['p_suggested']:.3f}"] for r in rows[:top]]),
            "",
            f"All {len(rows):,} in `label_issues.csv`.",
            "",
        ]
    leak_lines = []
    for i in sorted(findings.leaks):
        leak = s["parts"][i]["leaked_from_training"]
        leak_lines.append(
            f"- {parts[i].name}: {leak['images']:,} of {len(parts[i]):,} images ({100 * leak['share']:.1f}%) duplicate a "
            f"training image ({leak['exact']:,} exact, {leak['near']:,} near)."
        )
    lines += [
        "## Duplicates and leakage",
        "",
        f"Exact: the same decoded pixels. Near: a cosine similarity of at least {o.threshold:g} between the images' "
        "16×16 thumbnails (a copy saved again or resized) or between their features (a mirror image, a small crop). "
        f"Eval images leaked from training inflate the reported score; the recipe key `data.leaked_eval: \"drop\"` "
        "removes them from the eval split before training.",
        "",
        *leak_lines,
        *[f"- within {parts[i].name}: {p['duplicates']['exact_pairs']:,} exact and {p['duplicates']['near_pairs']:,} near pairs, "
          f"{p['duplicates']['images_with_a_duplicate']:,} images in them." for i, p in enumerate(s["parts"])],
        "",
        "![duplicate pairs](duplicates.png)",
        "",
        _table(["where", "kind", "similarity", "image a", "image b", "same label"],
               [[r["where"], f"{r['kind']} ({r['view']})", f"{r['similarity']:.3f}", f"{r['a']['split']} #{r['a']['row']} {r['a']['label']}",
                 f"{r['b']['split']} #{r['b']['row']} {r['b']['label']}", "yes" if r["same_label"] else "**no**"] for r in pair_rows[:top]]),
        "",
        f"All {len(pair_rows):,} pairs in `duplicates.csv`. Every image's similarity to its nearest other image, "
        "with the threshold (duplicates are the bump at the right):",
        "",
        "![similarities](similarity.png)",
        "",
        "## Class balance",
        "",
        "![class balance](class_balance.png)",
        "",
        _table(["class", *[p.name for p in parts]],
               [[names[c], *[f"{s['parts'][k]['class_counts'][names[c]]:,}" for k in range(len(parts))]] for c in range(len(names))]),
        "",
        "Largest class over smallest: " + ", ".join(f"{p['name']} {p['imbalance_ratio']:.1f}" for p in s["parts"] if p["imbalance_ratio"]) + ".",
        "",
        "## Outliers",
        "",
        f"Each image's cosine similarity to the nearest class centre (the mean feature of a class's training images); "
        f"below {findings.fence:.3f}, the training split's Q1 − 3·IQR, an image is unlike every class. "
        + ", ".join(f"{p['name']}: {p['outliers']:,}" for p in s["parts"]) + " below it. The lowest:",
        "",
        "![outliers](outliers.png)",
        "",
        "See `outliers.csv`.",
        "",
    ]
    if findings.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in findings.notes], ""]
    lines += ["## Settings", "", "```json", __import__("json").dumps(s["settings"], indent=2), "```", ""]
    return "\n".join(lines)


def terminal(findings, folder: Path) -> list[str]:
    """The short summary the command prints."""
    s = summary(findings)
    parts = s["parts"]
    sizes = ", ".join(f"{p['images']:,} {p['name']}" for p in parts)
    out = [
        f"inspect: {sizes} images; features of the pretrained "
        f"{s['backbone']['model']} ({s['backbone']['runtime'].split(' ')[0]}); {findings.seconds.get('total', 0):.0f} s"
    ]
    for p in parts:
        if "label_issues" in p:
            li = p["label_issues"]
            out.append(
                f"  labels, {p['name']}: {li['flagged']:,} likely wrong ({100 * li['flagged'] / max(p['images'], 1):.1f}%); "
                f"the probe agrees with {100 * (li['probe_accuracy'] or 0):.0f}% of the labels"
            )
    for p in parts:
        d = p["duplicates"]
        leak = p.get("leaked_from_training")
        text = f"  duplicates, {p['name']}: {d['exact_pairs']:,} exact and {d['near_pairs']:,} near pairs inside"
        if leak is not None:
            text += (f"; {leak['images']:,} of its images ({100 * leak['share']:.1f}%) duplicate training images "
                     f"({leak['exact']:,} exact)")
        out.append(text)
    out.append("  outliers: " + ", ".join(f"{p['outliers']:,} in {p['name']}" for p in parts)
               + "; class balance (largest/smallest): " + ", ".join(f"{p['imbalance_ratio']:.1f} in {p['name']}" for p in parts if p["imbalance_ratio"]))
    out.append(f"  report: {folder / 'report.md'}")
    return out

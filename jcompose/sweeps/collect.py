"""One table per sweep: each variant's swept values, every metric of its protocol, the paper's values.

A row per variant: its label, the swept fields (training fields as the run's stored config has them, so a
row says what the model was trained with even if the sweep file changed since), every number of the
trial's `eval/scores.json` (`protocol_metrics`), the published value beside each metric the sweep file
gives one for, and the training run's last logged step and loss. Written as `results.csv` and
`results.md` (a Markdown table with the paper's caption) in the sweep root.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from etils import epath

from jcompose.sweeps.spec import COMPOSE, EVALUATE, Sweep

# scores.json parts that are not metrics (settings, counts, per-item lists, provenance)
_NOT_METRICS = {"per_image", "per_pair", "per_object", "conventions", "run", "checkpoint_step", "subset_size",
                "images_in_source", "step", "inputs", "provenance"}
PAPER_NOTE = ("published values, comparable only with the paper's weights and data (the same base models, "
              "training data, steps and benchmark images)")


def protocol_metrics(scores: dict) -> dict[str, float]:
    """Every metric of a scores.json, by name: a number's dotted path, where a group's "value" or "mean"
    is the group itself ("fid", "clip_score", "kid") and "both_conventions" is left out of names
    ("clip_score.hessel"); counts (n_*) and settings are not metrics."""
    out: dict[str, float] = {}

    def walk(node: dict, path: list[str]) -> None:
        for key, value in node.items():
            if key in _NOT_METRICS or key.startswith("n_"):
                continue
            if isinstance(value, dict):
                walk(value, path + ([] if key == "both_conventions" else [key]))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                name = ".".join(path if key in ("value", "mean") and path else path + [key])
                out[name] = float(value)

    walk(scores, [])
    return out


def swept_columns(sweep: Sweep) -> dict[str, str]:
    """{swept field: its column}: the field's last name ("lr"), or its whole dotted path where two swept
    fields share the last name."""
    fields = list(dict.fromkeys(f for v in sweep.variants.values() for f in v.overrides))
    last = [f.split(".")[-1] for f in fields]
    return {f: (name if last.count(name) == 1 else f) for f, name in zip(fields, last, strict=True)}


def metric_columns(sweep: Sweep, rows: list[dict[str, Any]]) -> list[str]:
    """The measured metrics among the table's columns (not swept values, paper values or training logs)."""
    other = {"run", "variant", *swept_columns(sweep).values()}
    return [k for k in columns(rows) if k not in other and not k.endswith(" (paper)") and not k.startswith("train ")]


def _stored_value(config, field: str):
    node = config
    for part in field.split("."):
        node = node[part]
    return list(node) if isinstance(node, tuple) else node


def collect(sweep: Sweep, root: str) -> list[dict[str, Any]]:
    """One row per variant (see the module doc); cells of a stage that has not run are absent."""
    from jcompose import run_record
    from jcompose.sweeps.trial import Layout

    layout = Layout(root)
    column = swept_columns(sweep)
    fields = list(column)
    rows = []
    for name, variant in sweep.variants.items():
        row: dict[str, Any] = {"run": name}
        if any(v.label for v in sweep.variants.values()):
            row["variant"] = variant.label or name
        run = sweep.training_run_of(variant)
        stored = run_record.read_config(layout.run(run)) if run else None
        for field in fields:
            if field in variant.overrides:
                value = variant.overrides[field]
                if stored is not None and not field.startswith((COMPOSE, EVALUATE)):
                    value = _stored_value(stored, field)
                row[column[field]] = list(value) if isinstance(value, tuple) else value
        scores_path = epath.Path(layout.trial(name)) / "eval" / "scores.json"
        metrics = protocol_metrics(json.loads(scores_path.read_text())) if scores_path.exists() else {}
        for metric, value in metrics.items():
            row[metric] = value
            if metric in variant.paper:
                row[f"{metric} (paper)"] = variant.paper[metric]
        for metric, value in variant.paper.items():  # published values of metrics not (yet) measured
            row.setdefault(f"{metric} (paper)", value)
        if run:
            train_metrics = epath.Path(layout.run(run)) / "metrics.json"
            if train_metrics.exists():
                logged = json.loads(train_metrics.read_text())
                row.update({"train step": logged.get("step"), "train loss": logged.get("loss")})
        rows.append(row)
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The union of the rows' keys, each "<metric> (paper)" right after its metric."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    ordered = [k for k in keys if not k.endswith(" (paper)")]
    for key in [k for k in keys if k.endswith(" (paper)")]:
        metric = key[: -len(" (paper)")]
        ordered.insert(ordered.index(metric) + 1 if metric in ordered else len(ordered), key)
    return ordered


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table over the union of the rows' keys (missing cells blank)."""
    keys = columns(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def caption(sweep: Sweep) -> str:
    source = sweep.paper.get("source", "")
    note = sweep.paper.get("note", "")
    text = f"(paper): {source}: {PAPER_NOTE}." if source else ""
    return (text + (" " + note if note else "")).strip()


def write_csv(rows: list[dict[str, Any]], path: epath.Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(rows))
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


def write_tables(sweep: Sweep, rows: list[dict[str, Any]], root: str) -> str:
    """results.csv and results.md in the root; returns the Markdown."""
    folder = epath.Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(rows, folder / "results.csv")
    text = f"# {sweep.name}\n\n{format_table(rows)}\n" + (f"\n{caption(sweep)}\n" if caption(sweep) else "")
    (folder / "results.md").write_text(text)
    return text

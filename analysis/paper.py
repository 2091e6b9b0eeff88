"""The MeanFlow paper's ablation numbers, as data (docs/method.md §5).

Source: Geng, Deng, Bai, Kolter, He, "Mean Flows for One-step Generative Modeling", 2025,
arXiv 2505.13447, Table 1 (MF-B/4, ImageNet 256 latents, 80 epochs, 1-NFE FID-50K, lower is
better) and Table 5 (CFG with effective scale ω' = 2). These are ImageNet FIDs: they are not on
the same scale as mfsweep's toy metrics (SWD, energy, MMD, fd_digits), only the ranking of the
variants can be compared.

A study opts in with the parent-run tag `mfsweep.paper_table` (e.g. "1a"); each row of the
study's table is matched on its axis values.
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = ("Geng et al. 2025, arXiv 2505.13447, Table 1 (MF-B/4, ImageNet 256, 80 epochs, "
            "1-NFE FID-50K)")
COLUMN = "paper (1-NFE FID)"
NOTE = ("Paper column: FID-50K at 1 NFE from {cite}; unless this study ran the paper's model, data and "
        "budget it is not comparable in scale to this study's metric: compare the ranking of the rows only.")


@dataclass(frozen=True)
class PaperEntry:
    """One paper number: the axis values it belongs to and its 1-NFE FID."""

    match: tuple[tuple[str, object], ...]
    fid: float


#: The configuration every Table 1 row shares except for the one thing it varies (paper §5.1):
#: 25% r ≠ t, LN(−0.4, 1.0), JVP tangent (v, 0, 1), embedding (t, t − r), p = 1, no CFG.
TABLE1_BASELINE: dict[str, object] = {
    "meanflow.frac_r_neq_t": 0.25, "meanflow.time_sampler.name": "logit_normal",
    "meanflow.tangent": "v01", "model.time_embedding": "t_tr", "meanflow.weight_power": 1.0,
    "meanflow.cfg.omega": 1.0, "meanflow.cfg.kappa": 0.0,
}


def _table1(axis: str, values: dict) -> list[PaperEntry]:
    """Entries of one Table 1 ablation, each the baseline with `axis` set to the row's value."""
    return [PaperEntry(tuple({**TABLE1_BASELINE, axis: v}.items()), fid)
            for v, fid in values.items()]


#: `mfsweep.paper_table` tag → entries.
PAPER_TABLES: dict[str, list[PaperEntry]] = {
    "1a": _table1("meanflow.frac_r_neq_t", {0.0: 328.91, 0.25: 61.06, 0.5: 63.14, 1.0: 67.32}),
    "1b": _table1("meanflow.tangent", {"v01": 61.06, "v00": 268.06, "v10": 329.22,
                                       "v11": 137.96}),
    "1c": _table1("model.time_embedding", {"t_tr": 61.06, "t_r": 61.75, "tr": 63.13}),
    "1d": _table1("meanflow.time_sampler.name", {"logit_normal": 61.06, "uniform": 65.90}),
    "1e": _table1("meanflow.weight_power", {0.0: 79.75, 0.5: 63.98, 1.0: 61.06}),
    "1f": _table1("meanflow.cfg.omega", {1.0: 61.06, 2.0: 20.15, 3.0: 15.53, 5.0: 20.75}),
    "5": [
        PaperEntry((("meanflow.cfg.omega", 2.0), ("meanflow.cfg.kappa", 0.0)), 20.15),
        PaperEntry((("meanflow.cfg.omega", 1.0), ("meanflow.cfg.kappa", 0.5)), 19.15),
    ],
    # Table 2: system-level ImageNet 256, 240 epochs, 1-NFE FID-50K, by model size.
    "2": [PaperEntry((("model.backbone", name),), fid)
          for name, fid in {"dit_b2": 6.17, "dit_m2": 5.01, "dit_l2": 3.84, "dit_xl2": 3.43}.items()],
    # Table 3: unconditional CIFAR-10, U-Net ~55M, 1-NFE FID-50K. studies/paper/cifar10.yaml labels
    # the paper's own (t, r) sampler "paper" (LN(-2, 2), max/min); the official code's improved
    # setting ("official") has no number in the paper.
    "cifar10": [PaperEntry((("meanflow.time_sampler", "paper"),), 2.92)],
}

#: Where each table's numbers come from (tables not listed here are Table 1 rows).
_CITATIONS = {
    "5": "Geng et al. 2025, arXiv 2505.13447, Table 5 (CFG, ω' = 2, 1-NFE FID-50K)",
    "2": "Geng et al. 2025, arXiv 2505.13447, Table 2 (ImageNet 256, 240 epochs, 1-NFE FID-50K)",
    "cifar10": "Geng et al. 2025, arXiv 2505.13447, Table 3 (unconditional CIFAR-10, U-Net ~55M, 1-NFE FID-50K)",
}


@dataclass(frozen=True)
class MethodNumbers:
    """A training method's published FIDs (lower is better) and where they come from."""

    imagenet_1nfe: float | None  # class-conditional ImageNet 256, FID-50K
    imagenet_2nfe: float | None
    imagenet_model: str  # which model / setting the ImageNet numbers are for
    cifar10: float | None  # unconditional CIFAR-10, 1-NFE FID-50K (2-NFE noted in the source)
    source: str

    def cell(self) -> str:
        fmt = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
        text = f"{fmt(self.imagenet_1nfe)} / {fmt(self.imagenet_2nfe)}"
        text += f" ({self.imagenet_model})" if self.imagenet_model else ""
        return f"{text}; CIFAR-10 {fmt(self.cifar10)}"


#: The axis a methods study sweeps, and each method's own published numbers (docs/method.md §8).
METHOD_AXIS = "method.name"
METHOD_COLUMN = "paper (ImageNet 256 FID 1-NFE / 2-NFE; CIFAR-10 1-NFE)"
METHOD_NUMBERS: dict[str, MethodNumbers] = {
    "meanflow": MethodNumbers(3.43, 2.93, "MF-XL/2, 240 ep", 2.92,
                              "Geng et al. 2025, arXiv 2505.13447, Tables 2 and 3"),
    "imf": MethodNumbers(1.72, None, "iMF-XL/2", None,
                         "Geng et al. 2025, arXiv 2512.02012 (1-NFE as restated in docs/method.md §5; the 2-NFE "
                         "value was not checked)"),
    "alphaflow": MethodNumbers(2.58, 2.15, "α-Flow-XL/2+", None,
                               "Zhang et al. 2025, arXiv 2510.20771, ImageNet table of snap-research/alphaflow"),
    "shortcut": MethodNumbers(10.60, None, "Shortcut-XL/2", None,
                              "Frans et al. 2025, arXiv 2410.12557, as compared in Geng et al. 2025, Table 2"),
    "consistency": MethodNumbers(None, None, "", 2.97,
                                 "sCT, Lu & Song 2024, arXiv 2410.11081, Table 1 (CIFAR-10 1-step; 2.06 at 2 steps; "
                                 "ECT 3.60 / 2.11 as cited there; no ImageNet 256 result)"),
}


def method_note(names: list[str]) -> str:
    """Caption text naming the source of every method's paper numbers in `names`."""
    cites = [f"{n}: {METHOD_NUMBERS[n].source}" for n in names if n in METHOD_NUMBERS]
    return ("Paper column: each method's own published FIDs (" + "; ".join(cites) + "); other models, data "
            "and budgets than this study: compare the ranking only.") if cites else ""


def table_citation(tables: str | list[str]) -> str:
    """Citation naming the paper's table(s), e.g. '... Table 1a, 1d (MF-B/4, ...)'."""
    names = [tables] if isinstance(tables, str) else list(tables)
    if len(names) == 1 and names[0] in _CITATIONS:
        return _CITATIONS[names[0]]
    return CITATION.replace("Table 1", "Table " + ", ".join(names))


def _same(expected: object, actual: str) -> bool:
    """Compare a paper value with an `axis.*` tag string (numbers numerically)."""
    if isinstance(expected, (int, float)):
        try:
            return abs(float(actual) - float(expected)) < 1e-9
        except (TypeError, ValueError):
            return False
    return str(expected) == str(actual).strip()


def _match(entries: list[PaperEntry], axis_values: dict[str, str]) -> float | None:
    for entry in entries:
        present = [(k, v) for k, v in entry.match if k in axis_values]
        if present and all(_same(v, axis_values[k]) for k, v in present):
            return entry.fid
    return None


def paper_lookup(table: str | None, axis_values: dict[str, str]) -> tuple[float, str] | None:
    """(1-NFE FID, paper table) for a row with `axis_values` ({dotted key: tag string}).

    An entry matches when every one of its keys that the study sweeps agrees with the row (at
    least one key must be swept). The tagged table is searched first; for a Table 1 tag, the
    other Table 1 ablations follow, since they share one baseline (a study mirroring 1a that
    also sweeps the sampler finds the uniform row in 1d).
    """
    if not table or str(table) not in PAPER_TABLES:
        return None
    order = [str(table)]
    if order[0].startswith("1"):
        order += [t for t in PAPER_TABLES if t.startswith("1") and t != order[0]]
    for name in order:
        fid = _match(PAPER_TABLES[name], axis_values)
        if fid is not None:
            return fid, name
    return None


def paper_axes(table: str | None) -> set[str]:
    """The axis keys a paper table can be matched on (empty for an unknown table)."""
    if not table or str(table) not in PAPER_TABLES:
        return set()
    names = [t for t in PAPER_TABLES if t.startswith("1")] if str(table).startswith("1") else [
        str(table)]
    return {k for n in names for e in PAPER_TABLES[n] for k, _ in e.match}

"""The numbers the source papers report for their protocols, in our columns' units.

A run on a paper preset (on the preset's own dataset and backbone) shows these beside
its own values: our value with its interval, the paper's value as printed and where it
is printed, and whether it falls inside our interval. Accuracies the papers print as
top-1 *error* in % are converted to top-1 accuracy fractions (1 - error / 100); the
quoted text keeps the printed form.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperValue:
    """One reported number.

    Attributes:
        method: our method id of the row the paper reports.
        metric: our column id.
        value: the number in the column's units.
        quoted: the number as the paper prints it.
        source: paper, table or figure, and row.
        sd: the paper's standard deviation over its seeds, if it gives one.
        note: caveats (e.g. a baseline cited from another paper, not re-run).
    """

    method: str
    metric: str
    value: float
    quoted: str
    source: str
    sd: float | None = None
    note: str = ""


def _err(method: str, error_pct: float, source: str, note: str = "") -> PaperValue:
    return PaperValue(method, "top1", round(1 - error_pct / 100, 6),
                      f"top-1 error {error_pct:.2f} %", source, note=note)


def _acc(method: str, metric: str, pct: float, source: str, sd_pct: float | None = None,
         note: str = "") -> PaperValue:
    quoted = f"{metric.replace('top', 'top-')} {pct:g} %" + (
        f" ± {sd_pct:g}" if sd_pct is not None else "")
    return PaperValue(method, metric, round(pct / 100, 6), quoted, source,
                      None if sd_pct is None else round(sd_pct / 100, 6), note)


_ABN = "Fukui et al., CVPR 2019 (ABN)"
_COMB = "Iwayoshi et al., VISAPP 2023 (COMB)"
_MSABN = "Gupta & Sintorn, 2022 (MSABN)"
_DISC = "Wang et al., 2019 (discriminative attention)"


def _msabn(table: int, **rows: tuple[float, float]) -> tuple[PaperValue, ...]:
    """MSABN's fine-grained tables (ResNet-50, top-1 accuracy in %, mean ± sd over 3
    seeds): ``rows`` maps baseline / abn / msabn / puzzle to (mean, sd)."""
    names = {"baseline": ("baseline", "BaseModel"), "abn": ("abn", "BaseModel+ABN"),
             "msabn": ("msabn", "BaseModel+MSABN"),
             "puzzle": ("msabn-puzzle", "BaseModel + MSABN + Puzzle")}
    return tuple(_acc(names[k][0], "top1", mean,
                      f"{_MSABN}, Table {table}, row '{names[k][1]}', ResNet-50", sd,
                      "mean ± sd over 3 seeds") for k, (mean, sd) in rows.items())


def _comb_cub() -> tuple[PaperValue, ...]:
    rows = {"abn": ("ABN", 31.68, 57.01, 0.0302), "abn-amb": ("ABN + AMB", 33.53, 58.68, 0.0451),
            "abn-hk": ("Human knowledge", 37.42, 62.08, 0.0576),
            "abn-cot": ("ABN + COT", 43.98, 66.83, 0.0704),
            "abn-comb": ("ABN + COMB", 39.76, 66.57, 0.0921)}
    out: list[PaperValue] = []
    for m, (row, t1, t5, auc) in rows.items():
        out.append(_acc(m, "top1", t1, f"{_COMB}, Table 2, row {row!r}"))
        out.append(_acc(m, "top5", t5, f"{_COMB}, Table 2, row {row!r}"))
        out.append(PaperValue(m, "comb_insertion_auc", auc, f"insertion AUC {auc:.4f}",
                              f"{_COMB}, Table 4, row {row!r}",
                              note="on the test images ABN misclassifies"))
    return tuple(out)


def _comb_dogs() -> tuple[PaperValue, ...]:
    rows = {"abn": ("ABN", 71.81, 93.02), "abn-amb": ("ABN + AMB", 71.99, 92.80),
            "abn-cot": ("ABN + COT", 72.33, 91.12), "abn-comb": ("ABN + COMB", 73.59, 93.89)}
    out: list[PaperValue] = []
    for m, (row, t1, t5) in rows.items():
        out.append(_acc(m, "top1", t1, f"{_COMB}, Table 3, row {row!r}"))
        out.append(_acc(m, "top5", t5, f"{_COMB}, Table 3, row {row!r}"))
    return tuple(out)


#: preset -> the values its paper reports for it
PAPER_VALUES: dict[str, tuple[PaperValue, ...]] = {
    "abn-cifar100": (
        _err("baseline", 24.14, f"{_ABN}, Table 1, row 'ResNet110', column g(x)"),
        _err("abn", 22.82, f"{_ABN}, Table 1, row 'ResNet110', column g(x)·(1+M(x))"),
    ),
    "comb-cub200-2010": _comb_cub(),
    "comb-stanford-dogs": _comb_dogs(),
    "msabn-cub200-2011": _msabn(4, baseline=(40.62, 1.985), abn=(50.96, 2.145),
                                msabn=(54.98, 0.219), puzzle=(57.31, 0.645)),
    "msabn-stanford-cars": _msabn(5, baseline=(78.70, 1.062), abn=(85.59, 0.396),
                                  msabn=(86.81, 0.991), puzzle=(88.25, 1.492)),
    "discattn-cifar100": (
        _acc("discattn-gradcam", "top1", 74.02,
             f"{_DISC}, Table 1, row 'ResNet-110 + A_Grad-CAM'"),
        _acc("discattn-px", "top1", 76.24, f"{_DISC}, Table 1, row 'ResNet-110 + A_px'"),
        _acc("discattn-ch", "top1", 76.11, f"{_DISC}, Table 1, row 'ResNet-110 + A_ch'"),
        _acc("baseline", "top1", 72.78, f"{_DISC}, Table 2, row 'ResNet-110 [14]'",
             note="cited by the paper from Huang et al. 2016 (stochastic depth), not re-run"),
    ),
    "discattn-cub200-2011": (
        _acc("discattn-ch", "top1", 86.2, f"{_DISC}, Table 5, row 'ResNet-50 + A_ch'"),
        _acc("baseline", "top1", 81.7, f"{_DISC}, Table 5, row 'ResNet-50 [29]'",
             note="cited by the paper from Sun et al. 2018 (MAMC), not re-run"),
    ),
}


def for_run(preset: str, dataset: str, backbone: str, preset_dataset: str,
            preset_backbone: str) -> tuple[PaperValue, ...]:
    """The values that apply to a run: its preset's, when the run keeps the preset's
    dataset and backbone (another dataset or backbone is another experiment)."""
    if dataset != preset_dataset or backbone != preset_backbone:
        return ()
    return PAPER_VALUES.get(preset, ())

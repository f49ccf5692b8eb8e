"""CheXpert and CheXphoto: `read_chexpert`, the observation names and the label policies.

Both datasets publish one label CSV per split with a ``Path`` column, patient sex, age and view
columns, and the 14 `CHEXPERT_OBSERVATIONS`. This module turns their cells (1, 0, -1 or blank)
into label values by an uncertainty policy and a blank rule, and reads patient and split from
the path.
"""
from __future__ import annotations

import operator
import os
import re
from collections.abc import Callable

from cxr_jax.data.records._csv import (Header, Problems, parse_float, parse_sex, parsed_rows,
                                       read_header, read_rows)
from cxr_jax.data.records._schema import NAN, Labels, Record, label_index

#: The 14 CheXpert/CheXphoto observations, in CSV column order.
CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
#: Uncertainty policies for CheXpert's -1 ("uncertain"): U-Ignore, U-Zeros, U-Ones.
CHEXPERT_POLICIES = ("ignore", "zeros", "ones")
#: Treatments of CheXpert's blank ("not mentioned") cells.
CHEXPERT_BLANKS = ("zeros", "nan", "xrv")

_CHEX_INDEX = label_index(CHEXPERT_OBSERVATIONS)
_CHEX_RAW = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": None}
_CHEX_SPLITS = ("train", "valid", "test")
_PATIENT = re.compile(r"(patient\d+)")


def check_options(policy: str, blank: str) -> None:
    """ValueError unless `policy` is one of CHEXPERT_POLICIES and `blank` of CHEXPERT_BLANKS."""
    if policy not in CHEXPERT_POLICIES:
        raise ValueError(f"policy={policy!r}; choose one of {CHEXPERT_POLICIES}")
    if blank not in CHEXPERT_BLANKS:
        raise ValueError(f"blank={blank!r}; choose one of {CHEXPERT_BLANKS}")


def _chexpert_labels(raw: tuple[str, ...], uncertain: float, blank_value: float,
                     xrv_healthy: bool) -> Labels:
    vals = []
    for name, cell in zip(CHEXPERT_OBSERVATIONS, raw):
        v = _CHEX_RAW.get(cell.strip(), "bad")
        if v == "bad":
            raise ValueError(f"{name} value {cell!r} is not one of 1.0, 0.0, -1.0 or blank")
        vals.append(blank_value if v is None else uncertain if v == -1.0 else v)
    if xrv_healthy and _CHEX_RAW[raw[0].strip()] == 1.0:
        keep = (_CHEX_INDEX["No Finding"], _CHEX_INDEX["Support Devices"])
        vals = [v if i in keep else 0.0 for i, v in enumerate(vals)]
    return Labels._make(_CHEX_INDEX, tuple(vals))


def _chexpert_info(sex: str | None, age: str | None, fl: str | None, appa: str | None
                   ) -> tuple[str | None, float | None, str | None]:
    """(sex, age, view) from the Sex, Age, Frontal/Lateral and AP/PA cells (None: no column)."""
    view = None
    if fl is not None:
        key = fl.strip().lower()
        if key == "lateral":
            view = "LATERAL"
        elif key == "frontal":
            view = (appa.strip().upper() or None) if appa is not None else None
        elif key:
            raise ValueError(f"Frontal/Lateral value {fl!r} is neither 'Frontal' nor 'Lateral'")
    years = None
    if age is not None and age.strip():
        years = parse_float(age.strip(), "Age")
        if years == 0:  # placeholder for unknown in the train CSV, as xrv reads it
            years = None
    return (parse_sex(sex) if sex is not None else None), years, view


def read_chexpert(csv_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                  policy: str = "zeros", blank: str = "zeros",
                  lenient: bool = False) -> list[Record]:
    """Read a CheXpert or CheXphoto label CSV (train.csv, valid.csv, ...; gzipped or not).

    Each of the 14 `CHEXPERT_OBSERVATIONS` is published as 1 (positive), 0 (negative), -1
    (uncertain) or blank (not mentioned in the report).

    Uncertain (-1), by ``policy`` (Irvin et al., 2019): "ignore" (U-Ignore) -> NaN, so the label is
    masked out of losses and metrics; "zeros" (U-Zeros) -> 0.0; "ones" (U-Ones) -> 1.0.

    Blank, by ``blank``:
      * "zeros" (default) -> 0.0: the CheXpert convention, where the labeler leaves an
        observation blank when the report does not mention it, which training treats as negative.
      * "nan" -> NaN: not mentioned is treated as unknown.
      * "xrv" -> TorchXRayVision's CheX_Dataset rule: blank -> NaN, except that in rows whose
        "No Finding" is 1 every observation but "No Finding" and "Support Devices" becomes 0.0
        (whatever its cell says). With ``policy="ignore"`` this reproduces xrv's labels exactly.

    Other columns: ``view`` is the AP/PA cell for frontal images ("AP", "PA", and the "LL"/"RL"
    that a few frontal rows carry) and "LATERAL" for lateral ones; ``sex`` "M"/"F"/None
    ("Unknown" -> None); ``age`` in years, with the placeholder age 0 (3 rows of the train CSV)
    read as None, as xrv does; ``patient_id`` "patientNNNNN" and ``split`` (train/valid/test) from
    the path.

    Args:
      csv_path: the label CSV.
      root: folder the CSV's ``Path`` column is relative to (the parent of
        ``CheXpert-v1.0-small/``); paths are kept as published when None.
      policy: one of `CHEXPERT_POLICIES`.
      blank: one of `CHEXPERT_BLANKS`.
      lenient: skip bad rows (counted in one warning) instead of raising ValueError.

    Returns:
      One `Record` per row, in file order.
    """
    check_options(policy, blank)
    csv_path = os.fspath(csv_path)
    problems = Problems("read_chexpert", lenient)
    rows = read_rows(csv_path)
    head = read_header(rows, csv_path)
    parse = _row_parser(head, root, policy, blank)
    records = list(parsed_rows(rows, head, parse, problems))
    problems.finish()
    return records


def _row_parser(head: Header, root: str | os.PathLike | None, policy: str, blank: str
                ) -> Callable[[list[str], int], Record]:
    """Find the label CSV's columns; return the row parser ``(row, line) -> record``.

    Label cells and the sex/age/view cells repeat a lot, so each distinct combination of either
    is parsed once and its result shared.
    """
    uncertain = {"ignore": NAN, "zeros": 0.0, "ones": 1.0}[policy]
    blank_value = 0.0 if blank == "zeros" else NAN
    xrv_healthy = blank == "xrv"
    c_path = head.find("Path")[0]
    c_obs = [head.find(o)[0] for o in CHEXPERT_OBSERVATIONS]
    c_sex = head.find("Sex", required=False)
    c_age = head.find("Age", required=False)
    c_fl = head.find("Frontal/Lateral", required=False)
    c_appa = head.find("AP/PA", required=False)

    get_obs = operator.itemgetter(*c_obs)
    c_info = [c[0] if c is not None else None for c in (c_sex, c_age, c_fl, c_appa)]
    get_info = operator.itemgetter(*[c if c is not None else c_path for c in c_info])
    cache: dict[tuple[str, ...], Labels] = {}
    info_cache: dict[tuple[str, ...], tuple] = {}
    source = head.path
    prefix = None if root is None else os.fspath(root)

    def parse(row: list[str], line: int) -> Record:
        rel = row[c_path].strip()
        if not rel:
            raise ValueError("empty Path")
        raw = get_obs(row)
        labels = cache.get(raw)
        if labels is None:
            labels = cache[raw] = _chexpert_labels(raw, uncertain, blank_value, xrv_healthy)
        cells = get_info(row)
        info = info_cache.get(cells)
        if info is None:
            info = info_cache[cells] = _chexpert_info(
                *[cell if c is not None else None for cell, c in zip(cells, c_info)])
        parts = (rel.replace("\\", "/") if "\\" in rel else rel).split("/")
        if len(parts) >= 4 and parts[-3].startswith("patient") and parts[-4] in _CHEX_SPLITS:
            patient, split = parts[-3], parts[-4]  # .../train/patient00001/study1/x.jpg
        else:
            m = _PATIENT.search(rel)
            patient = m.group(1) if m else None
            split = next((p for p in parts if p in _CHEX_SPLITS), None)
        return Record(
            path=rel if prefix is None else os.path.join(prefix, rel),
            labels=labels,
            patient_id=patient,
            view=info[2],
            split=split,
            age=info[1],
            sex=info[0],
            source=source,
            line=line,
        )

    return parse

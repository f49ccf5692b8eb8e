"""Readers for the published chest X-ray datasets: one `Record` type (and segmentation entries).

Five formats are read exactly as their publishers distribute them, quirks included, one module
each:

* NIH ChestX-ray14 (`read_nih`, module ``nih``): ``Data_Entry_2017.csv`` or
  ``Data_Entry_2017_v2020.csv`` (optionally gzipped), whose bracketed headers
  ``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing[x,y]`` are split by the comma
  into two columns each; ``BBox_List_2017.csv``, whose header ends in three empty columns that the
  rows lack, with ``"Infiltrate"`` where the labels say ``"Infiltration"``; the official split
  lists ``train_val_list.txt`` / ``test_list.txt``.
* CheXpert and CheXphoto (`read_chexpert`, module ``chexpert``): 14 observations valued 1, 0, -1
  (uncertain) or blank (not mentioned), with the U-Ignore / U-Zeros / U-Ones uncertainty policies.
* CheXphoto release (`read_chexphoto`, module ``chexphoto``): `read_chexpert`'s rows plus each
  photo's subset ("natural/oneplus", "synthetic/digital", ...) and pairing key
  ("patient64541/study1/view1_frontal") in ``Record.meta``; `pair_with_originals` matches photos
  to their CheXpert originals.
* Object-CXR (`read_object_cxr`, module ``object_cxr``): one annotation string per image, objects
  separated by ``;``, each ``TYPE x1 y1 x2 y2 ...`` with TYPE 0 rectangle, 1 ellipse, 2 polygon.
* BrixIA (`read_brixia`, module ``brixia``): semicolon-separated with a UTF-8 byte-order mark; the
  six-zone ``BrixiaScore`` is a six-digit string (leading zeros restored if a tool made it an
  integer) whose digit sum must equal ``BrixiaScoreGlobal``.

* COVID-19 CXR segmentations (`read_covid_segmentation`, module ``covid_seg``): the
  ``structure.csv`` of the segmentation dataset the CXR network-dissection work uses, one row per
  (image, concept) mask PNG placed at ``Left``/``Top`` in the radiograph; 14 concept classes
  (`COVID_SEG_CONCEPTS`), "Nosogastric Tube" read as "Nasogastric Tube". This reader returns one
  `SegmentationEntry` per image (its `SegmentationMask` rows) rather than a `Record`; a lenient
  read also leaves out the images of skipped rows. `cxr_jax.semantics.concepts` composes the
  masks.

Every other reader returns a list of `Record` (module ``_schema``, with `Box`, `Shape`, `Labels`
and `label_matrix`), one per data row, in file order.

Strict or lenient: bad input never passes silently. A malformed row, a missing column, an
unknown label or a box outside the image raises ``ValueError("<file>, line <n>: <problem> ...")``;
with ``lenient=True`` the bad row is skipped instead and all skipped rows of one call are counted
in a single `warnings.warn`. A missing required column is always an error. All readers share one
row loop for this (module ``_csv``).

Any table with a path column (`read_image_paths`, module ``paths``) gives the list of images to
explain, with bad rows returned as problems for the caller to list.

Speed and memory: plain `csv` over (g)zipped text, with each distinct label combination parsed
once; a record's label mapping is a compact `Labels` object shared by every record with the same
values. The full NIH CSV (112,120 rows) reads in about 1 s of CPU and holds about 65 MB; the
CheXpert train CSV (223,414 rows) in about 1.7 s and 100 MB (mostly the path strings).
"""
from cxr_jax.data.records._schema import Box, Labels, Record, Shape, label_matrix
from cxr_jax.data.records.brixia import BRIXIA_ZONES, parse_brixia_score, read_brixia
from cxr_jax.data.records.covid_seg import (COVID_SEG_ALIASES, COVID_SEG_CONCEPTS,
                                            SegmentationEntry, SegmentationMask, covid_concept,
                                            read_covid_segmentation)
from cxr_jax.data.records.chexpert import (CHEXPERT_BLANKS, CHEXPERT_OBSERVATIONS,
                                           CHEXPERT_POLICIES, read_chexpert)
from cxr_jax.data.records.chexphoto import (chexphoto_subset, original_key, pair_with_originals,
                                            read_chexphoto)
from cxr_jax.data.records.nih import (NIH_BOX_ALIASES, NIH_FINDINGS, NIH_FRAME, parse_nih_box,
                                      read_nih)
from cxr_jax.data.records.paths import PATH_COLUMNS, ImagePaths, read_image_paths
from cxr_jax.data.records.object_cxr import (OBJECT_CXR_LABEL, format_object_cxr_annotation,
                                             parse_object_cxr_annotation, read_object_cxr)

__all__ = [
    "Box",
    "Shape",
    "Labels",
    "Record",
    "NIH_FINDINGS",
    "NIH_FRAME",
    "NIH_BOX_ALIASES",
    "CHEXPERT_OBSERVATIONS",
    "CHEXPERT_POLICIES",
    "CHEXPERT_BLANKS",
    "OBJECT_CXR_LABEL",
    "BRIXIA_ZONES",
    "read_nih",
    "read_chexpert",
    "read_chexphoto",
    "chexphoto_subset",
    "original_key",
    "pair_with_originals",
    "read_object_cxr",
    "read_brixia",
    "parse_nih_box",
    "parse_object_cxr_annotation",
    "format_object_cxr_annotation",
    "parse_brixia_score",
    "label_matrix",
    "PATH_COLUMNS",
    "ImagePaths",
    "read_image_paths",
    "COVID_SEG_CONCEPTS",
    "COVID_SEG_ALIASES",
    "SegmentationEntry",
    "SegmentationMask",
    "covid_concept",
    "read_covid_segmentation",
]

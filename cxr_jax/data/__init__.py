"""Data: synthetic phantoms (the embedded default), dataset readers, images, photo transforms,
and the Grain loader."""

from cxr_jax.data import phantoms, photo
from cxr_jax.data.images import load_image, load_record, preprocess
from cxr_jax.data.loader import ArraySource, RecordSource, make_loader
from cxr_jax.data.records import (CHEXPERT_OBSERVATIONS, COVID_SEG_CONCEPTS, NIH_FINDINGS, Box,
                                  Labels, Record, SegmentationEntry, Shape, label_matrix,
                                  read_brixia, read_chexpert, read_chexphoto,
                                  read_covid_segmentation, read_nih, read_object_cxr)

__all__ = ["ArraySource", "Box", "CHEXPERT_OBSERVATIONS", "COVID_SEG_CONCEPTS", "Labels",
           "NIH_FINDINGS", "Record", "RecordSource", "SegmentationEntry", "Shape", "label_matrix",
           "load_image", "load_record", "make_loader", "phantoms", "photo", "preprocess",
           "read_brixia", "read_chexpert", "read_chexphoto", "read_covid_segmentation", "read_nih",
           "read_object_cxr"]

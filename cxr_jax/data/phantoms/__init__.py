"""Synthetic chest radiograph phantoms with exact ground truth.

A phantom is a frontal (PA) chest radiograph sketch drawn from simple shapes: body outline (soft
tissue), two lung fields, heart, mediastinum with trachea, spine, posterior ribs, clavicles,
diaphragm domes and the abdomen below them. Every patient varies in size, position, rotation,
lung and heart proportions, tissue densities, contrast and noise. Findings are drawn on top, each
with its exact pixel mask, so a label is 1 exactly when its finding is drawn and its mask is
non-empty exactly then:

  nodule          small round opacity inside a lung
  mass            larger, lobulated round opacity inside a lung
  consolidation   irregular patchy opacity inside a lung
  effusion        fluid at a lung base: a meniscus rising towards the chest wall that blunts the
                  costophrenic angle and hides the dome (one or both sides)
  pneumothorax    a lucent crescent without lung markings between the chest wall and a thin
                  bright visceral pleural line (apex and lateral side of one lung)
  cardiomegaly    heart wider than half the thorax (cardiothoracic ratio > 0.5); mask = heart
  foreign_object  Object-CXR style coins, buttons, clips, wires and polygons, bright (metal)
  opacity         BrixIA-style diffuse haze in six zones scored 0-3 (`severity`)

Besides the finding masks, the concept masks (lungs, heart, mediastinum, spine, ribs, clavicles,
diaphragm, foreign objects, opacity), the BrixIA scores, the cardiothoracic ratio and the
burned-in marker are exact too: each is the very region or value the image was drawn with.

Image orientation follows the radiological convention: the patient's right lung is on the image
left. Geometry is defined in normalised coordinates (the image spans [-1, 1] in both directions),
so any `image_size >= 32` gives the same anatomy.

Every image depends only on `(seed, index)`: its parameters are counter-based hashes of the seed,
the image's index in the stream and a parameter slot, and its pixel noise is a window of a
per-seed noise bank chosen by the same hashes. `generate(10, seed=s)` therefore equals the first
ten images of `generate(20, seed=s)`, and `generate(n, seed=s, start=k)` gives images k..k+n-1 of
the stream: a random-access source for a data loader.

Two styles: "v2" (the default) and "v1" (`style="v1"`: the shapes above with white noise, what
every number before v2 was measured on, kept bit-identical to reproduce them). v2 draws the same
patients, with lung vessel trees, rib cortices, a body that thins towards its outline, soft
tissue, bowel gas, scatter, detector blur and quantum noise (`texture`); lung borders blurred by
a per-image amount (motion, breathing) and a heart border that softens at the cardiophrenic
angles (`anatomy.render`); findings that blend in
(soft, partly spiculated lesions; consolidation hiding the vessels, with air bronchograms; a
ground-glass haze the vessels show through: `blend`); and ET tubes, central lines and NG tubes
as concepts (`tubes`), all from draws of its own. `contrast` scales what the lung findings
change (the difficulty dial). `realism(images)` measures how radiograph-like a batch is
(spectral slope, pixel-scale power, gradient ratio); on 224-pixel images, four real
radiographs give -3.48 / 2.2e-4 / 9.8, v1 -2.92 / 2.0e-3 / 14.1 and v2 -3.66 / 3.6e-4 / 10.8
(seed 1, 24 images).

Modules (each step of a chunk draws its random values in the order `generator._render` calls it):
  schema     names (FINDINGS, CONCEPTS, ZONES, ...) and `PhantomBatch`
  _fields    counter-based draws, smooth random fields, the noise bank, soft edges
  geometry   pose, patient coordinates, lung outline, pixel <-> patient conversions
  anatomy    patient parameters and the healthy chest with its concept masks
  findings   every finding with its mask, BrixIA severity
  film       exposure and film shoulder, burned-in marker / shortcut tag, noise
  texture    what v2 adds: vessel trees, soft tissue, scatter, blur, noise
  blend      how v2's findings blend in: lesion margins, air bronchograms, haze
  tubes      v2's ET tube, central line and NG tube (concepts, not findings)
  realism    radiograph-likeness statistics of a batch
  generator  `generate`: checks, chunks, threads
  grid       `save_grid`: a PNG contact sheet

Example:
  >>> batch = generate(16, image_size=128, seed=0)
  >>> batch.images.shape, batch.labels.shape, batch.masks.shape
  ((16, 128, 128, 1), (16, 8), (16, 8, 128, 128))
"""

from cxr_jax.data.phantoms.generator import STYLES, generate
from cxr_jax.data.phantoms.grid import save_grid
from cxr_jax.data.phantoms.realism import realism
from cxr_jax.data.phantoms.schema import (CONCEPTS, DEFAULT_PREVALENCE, FINDINGS, INTENSITIES,
                                          LUNG_FINDINGS, OPACITY_FINDINGS, ZONES, PhantomBatch,
                                          first)

__all__ = ["CONCEPTS", "DEFAULT_PREVALENCE", "FINDINGS", "INTENSITIES", "LUNG_FINDINGS",
           "OPACITY_FINDINGS", "PhantomBatch", "STYLES", "ZONES", "first", "generate", "realism",
           "save_grid"]

"""Turn PyTorch weights (torchvision, TorchXRayVision) into cxr_jax checkpoints, and load them.

Command line (flags in `cli`):

    python -m cxr_jax.convert --source torchxrayvision --arch densenet121 \\
        --weights densenet121-all.pt --out xrv_dir

Python:

    model, variables = cxr_jax.convert.load("xrv_dir")
    meta = cxr_jax.convert.load_metadata("xrv_dir")
    logits = model.apply(variables, cxr_jax.convert.normalize_input(images01, meta))

cxr_jax models name their variables after torchvision's modules, so a state_dict converts by
renaming and re-laying out each tensor:

    torch key                              cxr_jax variables
    <module>.weight  (conv, [O, I, kh, kw]) params[<module path>]["kernel"]  [kh, kw, I, O]
    <module>.weight  (linear, [out, in])    params[<module path>]["kernel"]  [in, out]
    <module>.bias                          params[<module path>]["bias"]
    <module>.weight  (batch norm, [C])     params[<module path>]["scale"]
    <module>.running_mean / running_var    batch_stats[<module path>]["mean" / "var"]
    <module>.num_batches_tracked           dropped

with `<module path>` the torch module name split at its dots (`layer1.0.downsample.0` ->
("layer1", "0", "downsample", "0")). Images are NHWC here where torch has NCHW.

Files are read without executing pickled code unless the caller trusts the file
(`trust_pickle`); torch is imported only to read `.pt`/`.pth` files. A checkpoint is a folder of
`variables/` (orbax) and `model.json` (architecture, input convention, output names, operating
points).

Files:
  catalogue   published TorchXRayVision weights: labels, operating points, input sizes
  reading     state_dict files (.safetensors, .npz, torch) -> {key: numpy array}, safely
  spelling    other tools' key spellings -> torchvision's (prefixes, legacy DenseNet names)
  arch        which registered architecture a state_dict holds
  keys        torch <-> flax key and layout mapping, in both directions
  inference   input conventions, input scaling, operating-point calibration
  checkpoint  convert(), save(), load_metadata(), load()
  cli         main(argv), the absl-flags command line; `__main__` runs it
"""

from cxr_jax.convert.arch import describe_state_dict, infer_arch
from cxr_jax.convert.catalogue import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SOURCES,
    XRV_PATHOLOGIES,
    XRV_WEIGHTS,
)
from cxr_jax.convert.checkpoint import convert, load, load_metadata, save
from cxr_jax.convert.cli import main
from cxr_jax.convert.inference import calibrate, input_convention, normalize_input
from cxr_jax.convert.keys import abstract_variables, flax_to_torch, torch_spec, torch_to_flax
from cxr_jax.convert.reading import read_state_dict
from cxr_jax.convert.spelling import normalize_keys

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SOURCES",
    "XRV_PATHOLOGIES",
    "XRV_WEIGHTS",
    "abstract_variables",
    "calibrate",
    "convert",
    "describe_state_dict",
    "flax_to_torch",
    "infer_arch",
    "input_convention",
    "load",
    "load_metadata",
    "main",
    "normalize_input",
    "normalize_keys",
    "read_state_dict",
    "save",
    "torch_spec",
    "torch_to_flax",
]

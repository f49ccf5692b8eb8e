"""Small pieces every layer of cxr_jax shares, each written once.

  files     atomic writes (text, JSON, any writer), JSON reading
  filters   separable filters as matrices: Gaussian (scipy's modes), uniform, and their application
  targets   targets -> per-image scores: class indices or a callable over logits
  trees     get and set a value at a path in a nested mapping
  sharding  data parallelism over a device mesh: the mesh, replicated parameters, sharded
            batches, results gathered to numpy
  progress  a progress display: a bar on a terminal, a plain line every few seconds off one

Nothing here imports another part of cxr_jax.
"""

"""Building blocks of the denoisers (the models are in :mod:`lightning_infdiff.denoisers`).

* :mod:`.embeddings`: the noise-level (and class) embedding; :mod:`.precision`: the fp32
  conditioning path under autocast; :mod:`.common`: ``zero_module``, FiLM, the output head,
  point-wise layers.
* :mod:`.adm`: ADM U-Net blocks; :mod:`.fourier`: Fourier features, axial attention,
  transformer blocks; :mod:`.rope`: axial rotary embeddings; :mod:`.dwt`: Haar wavelet;
  :mod:`.attention`: the attention kernel choice.
* Point-set kernels: :mod:`.sparse_conv`, the sparse depthwise convolution on the pixel lattice
  (a package by concept: kernel resizing, the lattice and its kernel map, the custom op, the
  module), and :mod:`.knn` (lattice nearest neighbours).

Nothing is re-exported here: import from the module that defines a name.
"""

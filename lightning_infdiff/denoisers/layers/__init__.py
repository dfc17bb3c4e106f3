"""Building blocks of the denoisers (the models are in :mod:`lightning_infdiff.denoisers`).

* :mod:`.embeddings`: the noise-level (and class) embedding; :mod:`.precision`: the fp32
  conditioning path under autocast; :mod:`.common`: ``zero_module``, FiLM, point-wise layers.
* :mod:`.adm`: ADM U-Net blocks; :mod:`.fourier`: Fourier features, axial attention,
  transformer blocks; :mod:`.rope`: axial rotary embeddings; :mod:`.dwt`: Haar wavelet;
  :mod:`.attention`: the attention kernel choice.
* Point-set kernels: :mod:`.sparse_conv` (sparse depthwise convolution on the pixel lattice)
  (by concept: kernel resizing, lattice and kernel map, custom op, module), and :mod:`.knn` (lattice nearest neighbours).

Nothing is re-exported here: import from the module that defines a name.
"""

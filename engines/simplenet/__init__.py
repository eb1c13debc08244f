"""SimpleNet: a feature adaptor and a discriminator told apart from Gaussian-perturbed normal patch features.

* :mod:`.torch_model` - the network (frozen backbone slice, adaptor, discriminator, map), exported whole to ONNX.
* :mod:`.train` - the training loop on cached patch features (truncated L1 loss, margins +0.5 / -0.5).
* :mod:`.model` - the model class: feature caching, training, export, ``build_model`` for ``lineguard train``.
"""

"""DRAEM (Zavrtanik et al., ICCV 2021): reconstruct the image, then segment where input and reconstruction differ.

* :mod:`.torch_model` - the reconstructive and discriminative networks and the scoring head, exported whole.
* :mod:`.train` - the synthetic anomalies (Perlin masks filled with procedural or self-made textures) and the loop.
* :mod:`.model` - the model class: fit, score, export, ``build_model`` for ``lineguard train``.
"""

"""PatchCore: a memory bank of pretrained patch features; anomaly = distance to the nearest normal patch.

* :mod:`.torch_model` - the network (features, nearest-neighbour scoring), exported whole to ONNX.
* :mod:`.anomaly_map` - patch scores -> upsampled, Gaussian-smoothed pixel map.
* :mod:`.model` - the model class: fitting (feature collection + coreset), export, ``build_model`` for
  ``lineguard train``.
"""

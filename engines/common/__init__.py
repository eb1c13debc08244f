"""Parts shared by the torch-based engines (PatchCore, EfficientAD).

* :mod:`.backbones` - offline pretrained backbones and the feature extractor (torch).
* :mod:`.coreset` - greedy k-center coreset sampling (numpy only).
* :mod:`.onnx_export` - torch module -> ONNX graph with the runtime's input and output names.
"""

"""The cached-feature linear probe: the frozen backbone's one pass over the images (by PyTorch or ONNX Runtime) and the head fitted on what it computed."""

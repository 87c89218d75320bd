"""Using a finished run: loading it back, labelling images, scoring it (`finetune eval`), and exporting it to ONNX or int8, run without torch."""

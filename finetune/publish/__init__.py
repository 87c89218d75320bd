"""Publishing a run: the model card and the push to the Hugging Face Hub."""

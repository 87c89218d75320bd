"""`finetune new`: a starting recipe chosen from the user's own data, this machine and a time budget."""

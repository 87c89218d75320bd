"""Streaming: the images read, decoded and cropped in DataLoader workers from listed or sharded sources, without a decode pass."""

"""Reading and writing files: atomic writes, checksummed checkpoints, the SAELens format."""

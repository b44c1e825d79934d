"""Reading and writing images, and the built-in samples."""

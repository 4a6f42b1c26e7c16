"""The `spruce` command line."""

"""Tests of the CUDA path (marker ``gpu``): skipped where no CUDA device is present."""

"""Command-line tools of mvit_det; ``tools/*.py`` in the repository are thin entry points."""

"""clapd.models: the PyTorch side: checkpoint loading and export-ready encoder wrappers."""

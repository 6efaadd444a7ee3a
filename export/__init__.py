"""clapd.export: ONNX export, precision variants, verification against PyTorch, bundles and manifests."""

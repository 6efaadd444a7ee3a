"""clapd.daemon: the runtime (capture, windows, inference, matching, events, publishers); never imports torch."""

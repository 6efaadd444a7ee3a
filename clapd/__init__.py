"""clapd: on-device streaming sound understanding with LAION CLAP."""

__version__ = "0.1.0"

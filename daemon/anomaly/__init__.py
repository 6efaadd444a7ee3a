"""Anomaly detection against learned normal operation: a bank of normal-operation window embeddings per stream and
a normalised k-nearest-neighbour distance (`NormalBank`), scored inside the Detector."""

from clapd.daemon.anomaly.bank import BankError, NormalBank, Whitening, unit_rows

__all__ = ["BankError", "NormalBank", "Whitening", "unit_rows"]

"""Probes: the only code here that does network I/O. Each function is bounded by a timeout and
translates every foreign failure into a ProbeError with a precise ErrorKind."""

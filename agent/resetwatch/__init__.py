"""resetwatch: judge how sampled TCP connections end, from their ingress packets."""

__version__ = "0.1.0"

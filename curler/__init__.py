"""curler: deliver Gearman jobs to a web app as HTTP POST requests."""

__version__ = "0.1.0"

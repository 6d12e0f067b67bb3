"""llmscratch: the reference building blocks of the course, one concept per module."""

__version__ = "0.1.0"

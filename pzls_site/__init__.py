"""PZLS, the sync server of Pazator: the Django project package."""

__version__ = "0.1.0"

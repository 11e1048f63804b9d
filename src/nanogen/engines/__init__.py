"""Engines turn one image job or one video shot into a file. See ``base.py`` for the interface."""

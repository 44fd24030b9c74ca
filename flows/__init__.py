"""Prefect flows over damwatch's stages, and the ``damwatch`` command line."""

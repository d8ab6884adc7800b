"""Synthetic page renderers used to train and test illustration detectors (PIL + numpy only)."""

from .pages import RenderedPage, render_page

__all__ = ["RenderedPage", "render_page"]

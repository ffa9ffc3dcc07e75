"""Recipes: a page's work as a runnable notebook ("Open as notebook" on every page of the app).

``Recipe`` holds the cells; one builder per page turns that page's settings into a recipe that uses
only sparsekit's public API and ends by printing the page's headline values as one JSON line.
"""
from .base import (
    HEADLINE_PREFIX,
    Cell,
    Recipe,
    code,
    config_literal,
    headline_line,
    literal,
    md,
    model_root_note,
    parse_headline,
    rounded,
)

__all__ = ["HEADLINE_PREFIX", "Cell", "Recipe", "code", "config_literal", "headline_line", "literal", "md",
           "model_root_note", "parse_headline", "rounded"]

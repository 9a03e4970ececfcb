"""Waiting pages: themes rendered to static files, published to a folder or S3."""

from .publish import Published, publish
from .s3 import S3, S3Error
from .themes import build_pages, themes_dir

__all__ = ["S3", "Published", "S3Error", "build_pages", "publish", "themes_dir"]

"""The `kpr serve` web app: JSON search API and the page that drives it (static/, no external assets)."""
from pipelines.web.app import create_app, serve

__all__ = ["create_app", "serve"]

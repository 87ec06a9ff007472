"""Offline side of recbandit: the storefront simulator and the demo."""

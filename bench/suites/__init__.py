"""Config files (shipped as package data)."""

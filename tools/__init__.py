"""painnfx subpackage."""

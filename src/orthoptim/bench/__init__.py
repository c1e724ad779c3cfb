"""Layer 4: models and tasks for the arena (imports the library, never the reverse)."""

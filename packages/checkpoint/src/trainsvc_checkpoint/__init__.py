"""trainsvc checkpoint library (placeholder; filled in by the foundation issue)."""

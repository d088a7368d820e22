"""The project's library modules (imported by the scripts at the repository root; nothing here runs on its own)."""

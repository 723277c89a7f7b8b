"""Data: sources read from installed packages, annotators, the build, the schema and validation."""

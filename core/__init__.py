"""The leaf of the project: what every layer may import and what imports
nothing of the project itself."""

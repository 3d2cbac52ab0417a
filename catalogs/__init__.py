"""Package data: class schemes, recipes and leaderboard specs (YAML/GeoJSON). No code."""

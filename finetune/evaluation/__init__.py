"""Scoring predictions: metrics accumulated batch by batch, the per-class report, the report pictures, and the extra evaluation sets (other domains)."""

"""Scoring predictions: metrics accumulated batch by batch, the per-class report, the report pictures, intervals and calibration, and the extra evaluation sets (other domains)."""

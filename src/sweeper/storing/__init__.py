"""Storing: PNGs, the Parquet manifest, many writers' claims and parts, bounded reads of shared files."""

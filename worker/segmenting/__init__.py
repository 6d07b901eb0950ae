"""Segments computed from the segment indexes: RFM cut points and segment queries."""

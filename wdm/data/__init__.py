"""Data sets: the embedded phantom-brain default and (later) BraTS / LIDC-IDRI preprocessing."""

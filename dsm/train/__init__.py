"""Training DSM models: aligned data (`dsm.train.data`), batch construction and trainers."""

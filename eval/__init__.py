"""Evaluation: MedicalNet features, FID, MS-SSIM diversity, profiling, tables and figures."""

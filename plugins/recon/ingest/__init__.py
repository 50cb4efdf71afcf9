"""Statement file formats: each module turns one format into staging entries (see recon.staging)."""

"""Data layer: image IO, dataset layouts, patient-level splits and synthetic LGE-MRI phantoms."""

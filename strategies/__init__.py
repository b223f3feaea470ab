"""NNI one-shot strategy hooks and the GMACs constraint for DynOPool."""

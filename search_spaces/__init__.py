"""NNI search spaces built on DynOPool."""

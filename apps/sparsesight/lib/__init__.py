"""SparseSight MONAI Label app: the few classes MONAI Label's base classes need (the science is in `sparsesight`)."""
